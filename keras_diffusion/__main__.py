"""`python -m keras_diffusion`: the command line (`keras_diffusion.cli`).

Example:
    $ python -m keras_diffusion train ddpm --dataset mnist --out runs/mnist
"""

import sys

from keras_diffusion.cli import main

if __name__ == "__main__":
    sys.exit(main())
