"""The `minigen` command as a user meets it, through a real subprocess: run folders that never lose work
(fresh default folders, refusal to overwrite, checksummed checkpoints with fallback, Ctrl-C, resume rules),
and one clear line with exit status 2 for every bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="scikit-learn (the test extra) gives the 8x8 digits")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TINY = ["--opt", "hidden=[16]", "--opt", "latent=2", "--opt", "eval_k=5"]      # a VAE that trains in a second


def minigen(*args, cwd, env: dict | None = None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "minigen", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def one_line_error(result, *fragments):
    """Exit status 2, no traceback, and besides progress and evaluation lines a single line on stderr, the
    error, holding each fragment."""
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith(("step ", "train "))]
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], result.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 40-step VAE run in runs/vae-digits, made the way the README's main job makes it."""
    cwd = tmp_path_factory.mktemp("cli")
    result = minigen("train", "vae", "--steps", 40, *TINY, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd, cwd / "runs" / "vae-digits"


def copy_run(run, tmp_path) -> Path:
    shutil.copytree(run[1], tmp_path / "r")
    return tmp_path / "r"


# --- nothing lost ----------------------------------------------------------------------------------------------


def test_training_twice_without_out_makes_a_fresh_numbered_folder(run):
    cwd, first = run
    before = sorted(p.name for p in first.rglob("*"))
    result = minigen("train", "vae", "--steps", 8, *TINY, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert (cwd / "runs" / "vae-digits-2" / "latest.json").exists()
    assert sorted(p.name for p in first.rglob("*")) == before          # the first run untouched


def test_an_explicit_out_holding_a_run_is_refused_or_overwritten_on_request(run, tmp_path):
    folder = copy_run(run, tmp_path)
    one_line_error(minigen("train", "vae", "--out", folder, "--steps", 8, cwd=tmp_path),
                   "already holds a run", "--resume", "--out", "--overwrite")
    result = minigen("train", "vae", "--out", folder, "--steps", 10, "--overwrite", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((folder / "latest.json").read_text())["step"] == 10
    assert sorted(p.name for p in folder.glob("ckpt-*.npz")) == ["ckpt-00000008.npz", "ckpt-00000010.npz"]
    assert [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()][-1] == 10
    assert all(int(p.stem.split("-")[1]) <= 10 for p in (folder / "samples").glob("*.png"))


def test_pruning_never_deletes_what_the_run_did_not_write(tmp_path):
    from minigen.train import save_checkpoint
    foreign = tmp_path / "ckpt-99999999.json"
    foreign.write_text("{}")
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, {"step": step})
    assert foreign.exists() and sorted(p.name for p in tmp_path.glob("ckpt-0*.json")) == [
        "ckpt-00000002.json", "ckpt-00000003.json"]


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "empty json", "empty latest.json"])
def test_a_corrupt_checkpoint_falls_back_to_the_previous_good_one(run, tmp_path, damage):
    folder = copy_run(run, tmp_path)
    newest = folder / "ckpt-00000040.npz"
    if damage == "truncate":
        newest.write_bytes(newest.read_bytes()[:1000])
    elif damage == "flip a byte":
        raw = bytearray(newest.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        newest.write_bytes(bytes(raw))
    elif damage == "empty json":
        newest.with_suffix(".json").write_text("")
    else:
        (folder / "latest.json").write_text("")
    for command in (["eval", folder], ["sample", folder, "-n", 4, "-o", tmp_path / "s.png"]):
        result = minigen(*command, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        if damage != "empty latest.json":     # then ckpt-40 is still the newest good one
            assert "warning: skipping checkpoint ckpt-00000040" in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
    result = minigen("train", "vae", "--out", folder, "--resume", "--steps", 48, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 48                # one row per step


def test_no_good_checkpoint_is_one_line(run, tmp_path):
    folder = copy_run(run, tmp_path)
    for npz in folder.glob("ckpt-*.npz"):
        npz.write_bytes(b"garbage")
    result = minigen("eval", folder, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("minigen eval: no readable checkpoint in")


def test_resume_refuses_another_family_or_setting_extends_steps_and_says_when_already_past(run, tmp_path):
    folder = copy_run(run, tmp_path)
    one_line_error(minigen("train", "gan", "--out", folder, "--resume", cwd=tmp_path), "family 'vae' -> 'gan'")
    one_line_error(minigen("train", "vae", "--out", folder, "--resume", "--dataset", "mnist", cwd=tmp_path),
                   "dataset 'digits' -> 'mnist'")
    one_line_error(minigen("train", "vae", "--out", folder, "--resume", "--steps", 60, "--lr", 0.1, cwd=tmp_path),
                   "lr")
    one_line_error(minigen("train", "vae", "--out", folder, "--resume", "--steps", 30, cwd=tmp_path),
                   "already at step 40")
    config = json.loads((folder / "config.json").read_text())
    assert minigen("train", "vae", "--out", folder, "--resume", "--steps", 50, cwd=tmp_path).returncode == 0
    assert json.loads((folder / "config.json").read_text()) == {**config, "steps": 50}


def test_a_run_killed_after_a_checkpoint_resumes_with_one_metrics_row_per_step(run, tmp_path):
    folder = copy_run(run, tmp_path)
    with open(folder / "metrics.jsonl", "a") as log:                     # rows written after the checkpoint
        log.write(json.dumps({"step": 44, "nll": 1.0}) + "\n")
    assert minigen("train", "vae", "--out", folder, "--resume", "--steps", 44, cwd=tmp_path).returncode == 0
    steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert steps.count(44) == 1


def test_ctrl_c_saves_a_checkpoint_says_how_to_resume_and_exits_130(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "minigen", "train", "vae", "--steps", "100000", "--out", "r",
                                *TINY], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "r" / "config.json").exists() and time.time() < deadline:   # written just before fit
        time.sleep(0.2)
    time.sleep(2.0)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "interrupted after step" in last and "minigen train vae --out r --resume" in last
    step = int(last.split("interrupted after step ")[1].split(";")[0])
    assert json.loads((tmp_path / "r" / "latest.json").read_text())["step"] == step


# --- one clear line for every bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("args, fragments", [
    (["train", "vae", "--steps", -5], ["--steps must be at least 1"]),
    (["train", "vae", "--steps", 0], ["--steps must be at least 1"]),
    (["train", "vae", "--epochs", -1], ["--epochs must be positive"]),
    (["train", "vae", "--opt", "=3"], ["--opt expects NAME=VALUE"]),
    (["train", "vae", "--opt", "latent=abc"], ["option latent='abc'", "16"]),
    (["train", "vae", "--opt", "latent=0", "--steps", 3], ["cannot be built with --opt latent=0"]),
    (["train", "vae", "--opt", "lantent=2"], ["no option 'lantent'", "latent=16"]),
    (["train", "vae", "--device", "cuda", "--steps", 3], ["--device cuda"]),
    (["train", "vae", "--dataset", "nope"], ["unknown dataset 'nope'"]),
    (["train", "vae", "--out", "/proc/minigen-run", "--steps", 3], ["cannot write the run folder /proc/minigen-run"]),
    (["sample", "nowhere"], ["nowhere is not a minigen run folder"]),
])
def test_bad_input_is_one_line(tmp_path, args, fragments):
    one_line_error(minigen(*args, cwd=tmp_path), *fragments)


@pytest.mark.parametrize("n", [0, -3])
def test_sample_needs_a_positive_count(run, n):
    one_line_error(minigen("sample", run[1], "-n", n, cwd=run[0]), "-n must be at least 1")


def test_sample_to_an_unwritable_place_names_the_target(run):
    result = minigen("sample", run[1], "-n", 4, "-o", "/proc/nowhere/s.png", cwd=run[0])
    one_line_error(result, "/proc/nowhere")
    assert ".tmp" not in result.stderr


def test_a_truncated_checkpoint_json_is_named(run, tmp_path):
    folder = copy_run(run, tmp_path)
    for path in folder.glob("ckpt-*.json"):
        path.write_text('{"npz_sha')
    result = minigen("eval", folder, cwd=tmp_path)
    assert result.returncode == 2 and "ckpt-00000040.json is not valid JSON" in result.stderr


@pytest.mark.parametrize("steps", [5, 1000])
def test_the_nan_guard_is_one_true_line(tmp_path, steps):
    result = minigen("train", "vae", "--steps", steps, "--lr", 1e30, *TINY, cwd=tmp_path)
    latest = tmp_path / "runs" / "vae-digits" / "latest.json"
    kept = f"the last good checkpoint, step {json.loads(latest.read_text())['step']}, is kept" if latest.exists() \
        else "no checkpoint had been written yet"
    one_line_error(result, "is nan; stopping", kept)


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs the shared MNIST files")
@pytest.mark.parametrize("damage, problem", [("truncate", "truncated"), ("garbage", "not a gzip file")])
def test_a_damaged_data_file_is_named_with_what_is_wrong(tmp_path, damage, problem):
    (tmp_path / "d" / "mnist").mkdir(parents=True)
    for f in (SHARED / "mnist").iterdir():
        shutil.copy(f, tmp_path / "d" / "mnist")
    images = tmp_path / "d" / "mnist" / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:100000] if damage == "truncate" else b"garbage")
    one_line_error(minigen("train", "vae", "--dataset", "mnist", "--data-dir", tmp_path / "d", "--steps", 3,
                           cwd=tmp_path), str(images), problem)


def test_missing_data_names_the_flag_lists_every_file_and_leaves_no_folder(tmp_path):
    result = minigen("train", "vae", "--dataset", "mnist", "--data-dir", tmp_path / "none" / "d", "--steps", 3,
                     cwd=tmp_path, env={"MINIGEN_DATA_URL": "http://127.0.0.1:9"})     # a refused download
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--data-dir" in result.stderr and "data_dir=" not in result.stderr.split("(or")[0]
    assert "train-images-idx3-ubyte.gz" in result.stderr and "t10k-images-idx3-ubyte.gz" in result.stderr
    assert "shared" not in result.stderr and not (tmp_path / "none").exists()


# --- output a person reads ------------------------------------------------------------------------------------------


def test_progress_redirected_to_a_file_is_a_few_plain_lines_and_evaluations_are_printed(tmp_path):
    result = minigen("train", "vae", "--steps", 200, "--eval-every", 100, "--eval-images", 50, *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) <= 6 and "\r" not in result.stderr, lines
    assert [line.split(":")[0] for line in lines if "held-out" in line] == ["step 100", "step 200"]
    rows = [json.loads(line) for line in (tmp_path / "runs" / "vae-digits" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [100, 200]


def test_list_shows_default_datasets_and_options_and_train_help_points_there(tmp_path):
    listing = minigen("list", cwd=tmp_path).stdout
    assert "[default dataset: 8gaussians]" in listing and "latent=16" in listing and "binarized-digits" in listing
    assert "minigen list" in minigen("train", "--help", cwd=tmp_path).stdout


def test_benchmarks_refuse_an_unknown_name_and_list_the_names(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "benchmarks", "nope"], cwd=ROOT, capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown benchmark 'nope'; choose from: " in result.stderr and "kernels" in result.stderr
    helped = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=ROOT, capture_output=True,
                            text=True, env=env, timeout=120).stdout
    assert "engine_overhead" in helped and "results/quick/" in helped


def test_cuda_without_cupy_suggests_installing_from_this_checkout():
    import minigen as mg
    if mg.backend.cuda_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match=r'pip install -e "\.\[cuda\]"'):
        mg.tensor([1.0]).to("cuda")
