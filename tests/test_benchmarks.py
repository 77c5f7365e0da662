"""The benchmark scripts run end to end at toy sizes and write the results files the book reads.

Timings are not asserted (that is what the scripts are for); the structure of the JSON, the
checks the scripts make themselves (cached == uncached tokens, memory formulas) and their exit
status are.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, data: Path | None = None) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if data is not None:
        env["LMLIB_DATA"] = str(data)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_train_char_gpt_measures_throughput_and_a_time_to_loss_race(tmp_path, mirror):
    out = tmp_path / "char.json"
    stdout = run_script("train_char_gpt.py", "--steps", "2", "--repeats", "1", "--variants", "plain float32 loop",
                        "Trainer", "--ttl", "cpu preset", "--ttl-override", '{"steps": 4, "warmup": 1}',
                        "--out", str(out), data=mirror)
    result = json.loads(out.read_text())
    assert set(result["throughput"]["median_tokens_per_s"]) == {"plain float32 loop", "Trainer"}
    assert result["throughput"]["ratio_to_plain"]["plain float32 loop"] == 1.0
    race = result["time_to_loss"]["cpu preset"]
    assert race["steps"] == 4 and race["recipe"]["n_layer"] == 2 and [c["step"] for c in race["curve"]] == [4]
    assert race["val_loss"] > 1.88 and race["seconds_to_target"] is None and not race["meets_targets"]
    assert "NOT met" in stdout


def test_peak_memory_derives_what_fits(tmp_path):
    out = tmp_path / "memory.json"
    run_script("peak_memory.py", "--presets", "smoke", "--steps", "1", "--out", str(out))
    (row,) = json.loads(out.read_text())["rows"]
    assert row["preset"] == "smoke" and row["batch"] == 8 and row["peak_bytes"] > 0
    assert row["model_state_bytes"] == 16 * row["params"]


def test_generate_kv_cache_checks_cached_against_uncached(tmp_path, mirror):
    out = tmp_path / "generate.json"
    run_script("generate_kv_cache.py", "--lengths", "4", "--batches", "1", "2", "--layers", "1", "--heads", "2",
               "--width", "32", "--out", str(out), data=mirror)
    rows = json.loads(out.read_text())["rows"]
    assert [(r["new_tokens"], r["batch"]) for r in rows] == [(4, 1), (4, 2)]
    assert all(r["same_tokens"] and r["cached_tokens_per_s"] > 0 for r in rows)


def test_train_ladder_runs_each_rung_in_its_own_process(tmp_path):
    out = tmp_path / "ladder.json"
    run_script("train_ladder.py", "--model", "char", "--steps", "2", "--warmup", "1", "--rungs", "plain", "sdpa",
               "--out", str(out))
    result = json.loads(out.read_text())
    assert [r["rung"] for r in result["rows"]] == ["plain", "sdpa"]
    assert result["ratio_to_plain"]["plain"] == 1.0


def test_speedrun_ladder_runs_its_rungs_and_the_real_nanogpt(tmp_path, mirror):
    out = tmp_path / "speedrun.json"
    nanogpt = ROOT.parent / "shared" / "reference" / "nanoGPT"
    stdout = run_script("speedrun_ladder.py", "--budget", "0.2", "--rounds", "1", "--rungs", "baseline", "qk_norm",
                        "--eval-batches", "2", "--nanogpt-iters", "20",
                        "--nanogpt", str(nanogpt if nanogpt.is_dir() else tmp_path / "absent"), "--out", str(out),
                        data=mirror)
    result = json.loads(out.read_text())
    rungs = result["runs"]
    assert rungs["baseline"][0]["recipe"].get("optimizer") is None  # the cpu preset as it is
    assert rungs["qk_norm"][0]["recipe"].items() >= {"optimizer": "muon", "mlp": "relu2", "qk_norm": True}.items()
    for name, r in rungs.items():
        if name != "nanoGPT":  # a 0.2 s budget stops after the first chunk of the first estimate
            assert r[0]["steps"] == r[0]["curve"][-1]["step"] >= 4 and r[0]["train_seconds"] > 0
    assert set(result["table"]) == set(rungs) and result["table"]["baseline"]["val_loss"] > 1.88
    if nanogpt.is_dir():
        real = rungs["nanoGPT"][0]
        assert real["steps"] == 21 and [c["step"] for c in real["curve"]] == [20] and real["val_loss"] > 2
    else:
        assert "clone github.com/karpathy/nanoGPT" in stdout and "nanoGPT" not in rungs


def test_speedrun_ladder_interpolates_the_crossing():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from speedrun_ladder import crossing, rung_recipe

    curve = [{"train_seconds": 10.0, "val_loss": 2.5}, {"train_seconds": 20.0, "val_loss": 1.5}]
    assert crossing(curve, 2.0) == pytest.approx(15.0)
    assert crossing(curve, 3.0) == 10.0 and crossing(curve, 1.0) is None
    assert "mlp" not in rung_recipe("muon") and rung_recipe("relu2")["optimizer"] == "muon"  # cumulative, in order
    assert rung_recipe("wider")["n_layer"] == 4 and rung_recipe("wider")["schedule"] == "trapezoid"
    with pytest.raises(ValueError, match="rungs are"):
        rung_recipe("fp8")


def test_decode_llama2c_compares_with_run_c_on_the_same_story(tmp_path, mirror):
    if not (mirror / "stories260k" / "stories260K.bin").is_file():
        pytest.skip("stories260K is not in the data mirror")
    out = tmp_path / "decode.json"
    stdout = run_script("decode_llama2c.py", "--new-tokens", "16", "--repeats", "1", "--out", str(out), data=mirror)
    result = json.loads(out.read_text())
    assert result["course"]["new_tokens"] == 16 and result["course"]["tokens_per_s"] > 0
    assert result["profile"]["aten_calls_per_token"] > 0
    if "skipped" in result["llama2c"]:  # no reference folder or no compiler: said so, no ratio
        assert result["ratio_course_to_c"] is None and "skipped" in stdout
    else:
        assert result["llama2c"]["same_text"] and result["ratio_course_to_c"] > 0


def test_decode_llama2c_skips_the_c_side_without_the_reference(tmp_path, mirror):
    if not (mirror / "stories260k" / "stories260K.bin").is_file():
        pytest.skip("stories260K is not in the data mirror")
    out = tmp_path / "decode.json"
    stdout = run_script("decode_llama2c.py", "--new-tokens", "4", "--repeats", "1", "--reference",
                        str(tmp_path / "absent"), "--out", str(out), data=mirror)
    assert "git clone" in stdout and json.loads(out.read_text())["ratio_course_to_c"] is None


def test_gpt2_tokenizer_checks_ids_against_hugging_face(tmp_path, mirror):
    out = tmp_path / "gpt2_tokenizer.json"
    run_script("gpt2_tokenizer.py", "--max-chars", "3000", "--repeats", "1", "--out", str(out), data=mirror)
    rows = json.loads(out.read_text())["rows"]
    assert [r["text"] for r in rows] == ["Tiny Shakespeare", "WikiText-2 validation"]
    assert all(r["same_ids"] and r["tokens"] > 0 and r["ratio_to_fast"]["GPT2TokenizerFast"] == 1.0 for r in rows)


def test_course_gpt_sizing_reports_tokens_per_parameter(tmp_path):
    out = tmp_path / "sizing.json"
    run_script("course_gpt_sizing.py", "--steps", "1", "--sizes", "2", "--minutes", "1", "--precision", "bf16", "--out", str(out))
    result = json.loads(out.read_text())
    assert [(r["n_layer"], r["n_embd"]) for r in result["rows"]] == [(3, 192), (4, 256)]
    assert all(r["tokens_per_param"] == r["budget_tokens"] / r["params"] for r in result["rows"])
    assert result["chinchilla_choice"] in result["rows"] and result["precision"] == "bf16"


@pytest.mark.parametrize("script", ["train_char_gpt.py", "peak_memory.py", "generate_kv_cache.py", "train_ladder.py",
                                    "notebook_times.py", "decode_llama2c.py", "gpt2_tokenizer.py",
                                    "course_gpt_sizing.py", "speedrun_ladder.py"])
def test_every_script_explains_itself(script):
    assert "usage:" in run_script(script, "--help")


def test_notebook_times_records_one_notebook_with_its_budget(tmp_path, mirror):
    out = tmp_path / "times.json"
    name = "chapters/02_attention/01_attention_by_hand.ipynb"
    run_script("notebook_times.py", "--preset", "smoke", "--only", name, "--out", str(out), data=mirror)
    result = json.loads(out.read_text())
    assert result["preset"] == "smoke" and list(result["notebooks"]) == [name]
    row = result["notebooks"][name]
    assert row["ok"] and row["seconds"] > 0 and row["budget_minutes"] >= 1


def test_book_build_time_reads_each_notebooks_execution_from_the_log():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from book_build_time import notebook_seconds

    log = ("\x1b[01mreading sources... \x1b[39;49;00m[ 18%] \x1b[35mchapters/a/01_x\x1b[39;49;00m\n"
           f"{ROOT}/chapters/a/01_x.ipynb: Executing notebook using local CWD [mystnb]\n"
           f"{ROOT}/chapters/a/01_x.ipynb: Executed notebook in 8.83 seconds [mystnb]\n"
           "chapters/b/02_y.ipynb: Executed notebook in 120.5 seconds [mystnb]\n")
    assert notebook_seconds(log) == {"chapters/a/01_x.ipynb": 8.83, "chapters/b/02_y.ipynb": 120.5}
