"""scripts/plot_recipes.py: reads curves, extrapolates, chooses, plots."""
import json
import os
import sys

import numpy as np

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import plot_recipes  # noqa: E402


def write_run(folder, a, b, c, width):
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(dict(width=width, batch=128, lr=2e-3), f)
    with open(os.path.join(folder, "curve.csv"), "w") as f:
        f.write("step,epoch,images,wall_s,cpu_s,threads,world_size,lr,train_elbo,test_elbo,test_images\n")
        for i, minutes in enumerate(np.arange(2.5, 25, 2.5)):
            e = a + b * minutes ** -c
            f.write(f"{i},0,{i * 128},{minutes * 60},{minutes * 60},1,1,2e-3,{e - 0.1},{e},2000\n")


def test_extrapolation_picks_the_recipe_that_ends_lowest(tmp_path, capsys):
    # "fast" is lower during the measured 20 minutes, "slow" ends lower at 180
    write_run(tmp_path / "fast", a=1.20, b=1.0, c=1.0, width=32)
    write_run(tmp_path / "slow", a=1.00, b=2.0, c=0.6, width=61)
    png = tmp_path / "curves.png"
    assert plot_recipes.main([str(tmp_path / "fast"), str(tmp_path / "slow"), "--png", str(png),
                              "--collect", str(tmp_path / "kept")]) == 0
    out = capsys.readouterr().out
    assert "choice: slow" in out
    run = plot_recipes.read_run(str(tmp_path / "slow"))
    fit, at_180 = plot_recipes.extrapolate(run, 180)
    assert np.allclose(fit, (1.00, 2.0, 0.6), atol=1e-3)
    assert abs(at_180 - (1.0 + 2.0 * 180 ** -0.6)) < 1e-3
    # within the measured curve the measurement counts, not the fit
    fit_10, at_10 = plot_recipes.extrapolate(run, 10)
    assert fit_10 == fit and at_10 == plot_recipes.at_minutes(run, 10)
    run["test_elbo"][3] += 0.5                      # the 10-minute point, off the fitted law
    assert plot_recipes.extrapolate(run, 10)[1] == run["test_elbo"][3]
    assert png.stat().st_size > 10_000
    assert sorted(os.listdir(tmp_path / "kept" / "slow")) == ["config.json", "curve.csv"]


def test_a_folder_without_a_curve_is_refused(tmp_path, capsys):
    assert plot_recipes.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_short_curves_are_compared_at_the_budget_every_run_reached(tmp_path, capsys):
    write_run(tmp_path / "long", a=1.20, b=1.0, c=1.0, width=32)
    short = tmp_path / "short"
    write_run(short, a=1.0, b=1.0, c=1.0, width=48)
    lines = (short / "curve.csv").read_text().splitlines()
    (short / "curve.csv").write_text("\n".join(lines[:3]) + "\n")     # 2.5 and 5 minutes only
    assert plot_recipes.main([str(tmp_path / "long"), str(short)]) == 0
    out = capsys.readouterr().out
    assert "choice: short" in out and "at 5.0 CPU-minutes" in out
    run = plot_recipes.read_run(str(tmp_path / "long"))
    assert abs(plot_recipes.at_minutes(run, 3.75) - (1.2 + (1 / 2.5 + 1 / 5) / 2)) < 1e-9


def test_a_learning_rate_changed_on_resume_is_named_in_the_recipe(tmp_path):
    """config.json keeps only the last learning rate; the curve's lr column
    shows where a resume changed it (a decaying rate is not a change)."""
    write_run(tmp_path / "run", a=1.0, b=1.0, c=1.0, width=32)
    curve = tmp_path / "run" / "curve.csv"
    lines = curve.read_text().splitlines()
    decayed = [line.replace(",2e-3,", f",{2e-3 * 0.99 ** i:.3e},") for i, line in enumerate(lines[1:6])]
    dropped = [line.replace(",2e-3,", ",6e-4,") for line in lines[6:]]
    curve.write_text("\n".join([lines[0]] + decayed + dropped) + "\n")
    run = plot_recipes.read_run(str(tmp_path / "run"))
    assert plot_recipes.learning_rate_changes(run) == [(4, 6e-4)]
    assert plot_recipes.describe(run["config"], run).endswith("lr 0.002 then 0.0006 from step 4")
    write_run(tmp_path / "plain", a=1.0, b=1.0, c=1.0, width=32)
    plain = plot_recipes.read_run(str(tmp_path / "plain"))
    assert plot_recipes.learning_rate_changes(plain) == []
    assert plot_recipes.describe(plain["config"], plain).endswith("lr 0.002")
    assert plot_recipes.describe({**plain["config"], "hflip": True}, plain).endswith(
        "lr 0.002, mirrored patches")
    # the weights average is named only when a run changed it
    assert plot_recipes.describe({**plain["config"], "ema_decay": 0.999}, plain).endswith("lr 0.002")
    assert plot_recipes.describe({**plain["config"], "ema_decay": 0.9998}, plain).endswith(
        "lr 0.002, weights average decay 0.9998")
    assert plot_recipes.describe({**plain["config"], "run_options": {"precision": "bf16"}},
                                 plain).endswith("lr 0.002, bf16 steps")
    assert plot_recipes.describe({**plain["config"], "run_options": {"precision": "fp32"}},
                                 plain).endswith("lr 0.002")
