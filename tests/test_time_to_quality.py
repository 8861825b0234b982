"""`benchmarks.time_to_quality`: the contestants, the report, and a smoke run of diffusers' worker."""

import re
from pathlib import Path

import numpy as np
import pytest

from benchmarks import time_to_quality as ttq


def test_contestants_parse_and_unknown_ones_name_the_choices():
    assert ttq.parse_contestant("keras-torch") == ("keras", "torch", None)
    assert ttq.parse_contestant("keras-jax:ddpm") == ("keras", "jax", "ddpm")
    assert ttq.parse_contestant("diffusers") == ("diffusers", None, None)
    for bad in ("keras-numpy", "keras-torch:faster", "pytorch"):
        with pytest.raises(ValueError, match="Unknown contestant.*keras-BACKEND"):
            ttq.parse_contestant(bad)


def test_the_recipe_is_the_readme_command():
    """The benchmark trains what the README's main command trains."""
    from keras_diffusion.cli import build_parser

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert ttq.README_COMMAND in readme
    flags = ttq.README_COMMAND.split("train ", 1)[1].split()
    args = build_parser().parse_args(["train", *flags])
    recipe = build_parser().parse_args(["train", *ttq.RECIPE, "--out", args.out, "--epochs", str(args.epochs)])
    assert vars(args) == vars(recipe)


def _result(name, fids, deterministic=((10, 3.0), (50, 2.5))):
    return {
        "name": name, "params": 1000, "batch_size": 32,
        "budgets": [{"minutes": m, "fid": f, "kid": 0.01, "steps": 10, "cpu_seconds": 60.0 * m, "sampler": "heun 18 steps"}
                    for m, f in zip((2, 5, 10, 20), fids)],
        "deterministic": [{"sampler": "heun", "steps": n, "nfe": n, "fid": f, "kid": 0.0} for n, f in deterministic],
    }


def test_report_gives_the_time_to_diffusers_fid_and_the_speedup(tmp_path):
    results = {
        "config": {"budgets": [2, 5, 10, 20], "num_images": 1000, "final_num_images": 1000},
        "machine": {"cpu": "cpu", "cores_available": 2, "load_average": 0.0, "versions": {"keras": "3"}},
        "contestants": {"keras-torch": _result("keras-torch", (9.0, 4.0, 3.0, 2.0)),
                        "keras-jax": _result("keras-jax", (30.0, 20.0, 15.0, 12.0)),
                        "diffusers": _result("diffusers", (40.0, 20.0, 8.0, 4.0))},
    }
    assert ttq.reach(results["contestants"]["keras-torch"], 4.0) == 5
    assert ttq.reach(results["contestants"]["keras-jax"], 4.0) is None
    table = ttq.markdown(results, target=4.0, real_fid=0.3)
    # 9 at 2 min, 4 at 5 min: log-log interpolation puts FID 4 at 5 min itself; 6 at about 3.2 min.
    assert re.search(r"\| keras-torch \|.*\| by 5 min \(at least 4\.0x sooner\) \|", table)
    assert ttq.interpolated_reach(results["contestants"]["keras-torch"], 6.0) == pytest.approx(
        np.exp(np.log(2) + np.log(9 / 6) / np.log(9 / 4) * np.log(5 / 2)))
    assert ttq.interpolated_reach(results["contestants"]["keras-torch"], 9.5) == 2
    assert ttq.interpolated_reach(results["contestants"]["keras-jax"], 4.0) is None
    assert "| keras-jax |" in table and "not within the budgets" in table
    assert "| keras-torch | best at 10 NFE / best at 50 | | | 1.20x | |" in table
    ttq.plot(results, str(tmp_path / "fid.png"))
    assert (tmp_path / "fid.png").stat().st_size > 1000


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        ttq.main(["--budgets", "5,2"])
    assert "increasing positive minutes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ttq.main(["--contestants", "keras-torch:nope"])
    assert "Unknown contestant" in capsys.readouterr().err


def test_diffusers_worker_smoke_run_trains_scores_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setitem(ttq.DIFFUSERS, "sample_steps", 2)
    args = ([0.002, 0.004], 4, 4, str(tmp_path), 0, 1)
    first = ttq.diffusers_worker(*args)
    assert [row["minutes"] for row in first["budgets"]] == [0.002, 0.004]
    assert first["budgets"][1]["steps"] > first["budgets"][0]["steps"] >= 1
    assert all(np.isfinite(row["fid"]) and row["fid"] > 0 for row in first["budgets"])
    assert [row["nfe"] for row in first["deterministic"]] == [10, 50]
    again = ttq.diffusers_worker(*args)  # every stage finished: read back, nothing retrained
    assert again["budgets"] == first["budgets"]
