"""`Untracked`: holds a teacher out of Keras' layer tracking (and torch's module registry)."""


class Untracked:
    """A plain box: a model stored in it is not a sublayer, so its weights are not saved with the owner.

    Example:
    >>> Untracked(3).value
    3
    """

    def __init__(self, value):
        self.value = value
