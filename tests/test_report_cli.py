"""`pirl report` on synthetic run directories, and the CLI skeleton."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pirl.cli.main import COMMANDS, build_parser, main
from pirl.train.logging import MetricsLogger, write_summary
from pirl.train.report import ReportConfig, load_run, make_report

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("reach-v3", "push-v3")


def _fake_run(path: Path, method: str, gain: float) -> Path:
    log = MetricsLogger(path, tensorboard=False)
    for i, step in enumerate(range(0, 25, 5)):
        log.log(step, {"loss/policy": 0.1}, env_steps=step * 100)
        per = {f"eval/success/{t}": min(1.0, 0.2 + gain * i * (k + 1) / 4) for k, t in enumerate(TASKS)}
        log._start -= 60  # pretend each eval interval took a minute
        log.log(step, {"eval/success": sum(per.values()) / len(per), **per}, env_steps=step * 100)
    log.close()
    (path / "config.yaml").write_text(f"algo: {{name: {method}}}\n")
    write_summary(path, {"env_steps": 2400, "eval_protocol": "held_out (10 episodes per task)"})
    return path


def test_report_png_and_table(tmp_path):
    a = _fake_run(tmp_path / "ppo_run", "ppo", 0.2)
    b = _fake_run(tmp_path / "grpo_run", "grpo", 0.1)
    rep = make_report([a, b], ReportConfig(out=tmp_path / "out", title="toy"))
    for p in rep.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    assert {p.name for p in rep.plots} == {"success_vs_env_steps.png", "success_vs_wall_time.png"}
    assert "| ppo_run | ppo | 0.20 → 0.50 | 2.4k | 5m00s | held_out (10 episodes per task) |" in rep.table
    assert "| push-v3 | 0.20 → 0.60 | 0.20 → 0.40 |" in rep.table
    md = rep.markdown.read_text()
    assert "![success_vs_env_steps](success_vs_env_steps.png)" in md
    run = load_run(a)
    assert run.tasks == sorted(TASKS) and run.method == "ppo" and len(run.mean) == 5


def test_report_names_the_algorithm_and_the_sampler(tmp_path):
    # PPO and LOOP runs with one sampler read alike when only the sampler was shown ("flow_sde" twice)
    a = _fake_run(tmp_path / "a", "x", 0.1)
    (a / "config.yaml").write_text("algorithm: loop\nsampler: {method: flow_sde}\n")
    assert load_run(a).method == "loop + flow_sde"  # a run still going: its config says it
    write_summary(a, {"algorithm": "ppo", "method": "regression head"})
    assert load_run(a).method == "ppo + regression head"  # the summary wins: the trainer wrote what ran


def test_report_links_evaluation_videos(tmp_path):
    """report.md links each run's videos, the same held-out episode before and after RL on one row, relative to
    the report's directory; half-written videos (hidden temporaries) and a run without videos are left out."""
    a = _fake_run(tmp_path / "runs" / "ppo_run", "ppo", 0.2)
    b = _fake_run(tmp_path / "runs" / "grpo_run", "grpo", 0.1)
    names = ["before0_push-v3_failure.mp4", "after0_push-v3_success.mp4", "before0_reach-v3_failure.mp4",
             "after0_reach-v3_failure.mp4", "before1_reach-v3_success.mp4", ".after1_reach-v3_success.tmp.mp4"]
    (a / "videos").mkdir()
    for name in names:
        (a / "videos" / name).write_bytes(b"")
    md = make_report([a, b], ReportConfig(out=tmp_path / "out")).markdown.read_text()
    videos = md[md.index("## Evaluation videos"):]
    assert "| task | episode | before | after |" in videos and "grpo_run" not in videos
    assert ("| push-v3 | 0 | [failure](../runs/ppo_run/videos/before0_push-v3_failure.mp4) | "
            "[success](../runs/ppo_run/videos/after0_push-v3_success.mp4) |") in videos
    assert "| reach-v3 | 1 | [success](../runs/ppo_run/videos/before1_reach-v3_success.mp4) | - |" in videos
    assert videos.count("| reach-v3 |") == 2 and ".tmp" not in videos
    assert "Evaluation videos" not in make_report([b], ReportConfig(out=tmp_path / "out_b")).markdown.read_text()


def test_report_cli(tmp_path, capsys):
    a = _fake_run(tmp_path / "r1", "loop", 0.2)
    assert main(["report", str(a), "per_task=false", "x_axes=[env_steps]"]) == 0
    assert (a / "report" / "success_vs_env_steps.png").is_file()
    assert not (a / "report" / "success_vs_wall_time.png").exists()
    assert "| r1 | loop |" in capsys.readouterr().out
    assert main(["report", str(a), "dpii=3"]) == 2
    assert "did you mean 'dpi'" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["report"]) == 2


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_exits_zero(command, capsys):
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: pirl" in out and "config keys" in (out if command else "config keys")


def test_report_help_lists_config_docs(capsys):
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert "dpi: int = 120\n      PNG resolution." in capsys.readouterr().out


def test_unavailable_command_and_resume_rules(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(COMMANDS, "train", COMMANDS["train"].__class__(
        "t", "pirl.no_such_module:main", "pirl.train.report:ReportConfig"))
    assert main(["train", "dpi=100"]) == 2
    assert "not available yet: cannot import pirl.no_such_module" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "dpi=100"]) == 2
    assert "--resume continues a run with its saved config" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("dpi: 77\n")
    assert main(["train", "--resume", str(tmp_path), "--print-config"]) == 0
    assert "dpi: 77" in capsys.readouterr().out


def test_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "pirl.cli.main", "--version"], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.startswith("pirl ")


def test_report_reads_a_pirl_eval_directory(tmp_path, capsys):
    """`pirl eval` writes eval.json, no metrics: the report tabulates it (one point) instead of refusing it."""
    import json

    ev = tmp_path / "e1"
    ev.mkdir()
    (ev / "eval.json").write_text(json.dumps({
        "policy": "p.safetensors", "protocol": "held_out", "episodes_per_task": 10, "success": 0.55,
        "per_task": {"reach-v3": 0.3, "push-v3": 0.8}, "episodes": 20, "sampler": "ode, K=4"}))
    run = _fake_run(tmp_path / "r1", "loop", 0.2)
    assert main(["report", str(ev), str(run), f"out={tmp_path / 'rep'}"]) == 0
    out = capsys.readouterr().out
    assert "| e1 | eval (ode, K=4) | 0.55 | - | - | held_out (10 episodes per task) |" in out
    assert "| push-v3 | 0.80 |" in out and "| reach-v3 | 0.30 |" in out
    (ev / "eval.json").write_text('{"success": 0.5')  # cut short
    assert main(["report", str(ev)]) == 2
    err = capsys.readouterr().err
    assert "eval.json is damaged" in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_closed_stdout_ends_quietly():
    """`pirl train --help | head -1`: the reader goes away; pirl stops without a traceback."""
    p = subprocess.Popen([sys.executable, "-m", "pirl.cli.main", "train", "--help"], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    p.stdout.close()  # before pirl has written anything (its imports take longer than this)
    err = p.stderr.read().decode()
    assert p.wait() == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_report_reads_a_demo_directory_and_names_an_unknown_metric(tmp_path, capsys):
    # a `pirl demo` directory was "not a run directory of `pirl train`, `pirl demo` or `pirl eval`"; a mistyped
    # key=... wrote an empty report
    demo = tmp_path / "demo-1"
    _fake_run(demo / "rl", "ppo", 0.2)
    (demo / "config.yaml").write_text("demos_per_task: 5\n")
    run = load_run(demo)
    assert run.name == "demo-1" and run.mean[0] == pytest.approx(0.2) and run.path == demo / "rl"
    assert main(["report", str(demo), "key=eval/succes", f"out={tmp_path / 'rep'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pirl report: error: key=eval/succes: no record of") and "eval/success" in err, err
    assert not (tmp_path / "rep").exists()
