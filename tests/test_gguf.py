"""Bad input to the real-model path: one clear line, exit 1, no models/base written.

A GGUF that does not exist, one whose checksum differs from params, one of an architecture
transformers cannot load (a real GGUF file written here with the `gguf` library), a tokenizer
without a chat template, half a GGUF spec in params, and a preset name that does not exist."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from bioreasoner.core import config
from bioreasoner.core.io import BadInputError
from tests.conftest import ROOT, run_stage
from tests.params_edit import params_data


def write_gguf(path: Path, arch: str) -> str:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def base_with(project: Path, **model: object) -> subprocess.CompletedProcess[str]:
    params = params_data(lambda p: p["model"].update(model))
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return run_stage(project, "base.py", "--out", "models/base")


def assert_refused(res: subprocess.CompletedProcess[str], project: Path, *needles: str) -> None:
    assert res.returncode == 1, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in res.stderr
    for needle in needles:
        assert needle in last, last
    assert not (project / "models" / "base").exists()  # nothing half-written


def test_a_missing_gguf_file_is_one_line(project, tmp_path):
    res = base_with(project, base=str(tmp_path), gguf_file="nope.gguf", gguf_sha256="0" * 64)
    assert_refused(res, project, "nope.gguf", "model.gguf_file", "does not exist")


def test_a_gguf_whose_checksum_differs_is_refused_before_loading(project, tmp_path):
    write_gguf(tmp_path / "m.gguf", "llama")
    res = base_with(project, base=str(tmp_path), gguf_file="m.gguf", gguf_sha256="f" * 64)
    assert_refused(res, project, "model.gguf_sha256", "params expect " + "f" * 64)


def test_a_gguf_architecture_transformers_cannot_load_names_it(project, tmp_path):
    sha = write_gguf(tmp_path / "m.gguf", "madeup")
    res = base_with(project, base=str(tmp_path), gguf_file="m.gguf", gguf_sha256=sha)
    assert_refused(res, project, "model.gguf_file", "transformers cannot load it", "architecture madeup")


def test_a_tokenizer_without_a_chat_template_says_which_param_to_set(project, tiny_base, tmp_path):
    folder = Path(shutil.copytree(tiny_base[0], tmp_path / "no-template"))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    tok_cfg = folder / "tokenizer_config.json"
    tok_cfg.write_text(tok_cfg.read_text().replace('"chat_template"', '"unused_template"'))
    res = base_with(project, base=str(folder))
    assert_refused(res, project, "no chat template", "model.chat_template")
    # ... and naming a template file makes the same folder a valid base
    (project / "chatml.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    res = base_with(project, base=str(folder), chat_template="chatml.jinja")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "<|im_start|>" in (project / "models" / "base" / "chat_template.jinja").read_text()


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        ({"gguf_file": "m.gguf"}, "gguf_file and gguf_sha256 go together"),  # no checksum
        ({"gguf_sha256": "0" * 64}, "gguf_file and gguf_sha256 go together"),  # a checksum of nothing
        ({"base": "tiny", "gguf_file": "m.gguf", "gguf_sha256": "0" * 64}, "not `tiny`"),  # no folder
        ({"base": "x", "gguf_file": "m.gguf", "gguf_sha256": "ABC"}, "gguf_sha256"),  # not a sha256
    ],
)
def test_half_a_gguf_spec_is_refused_by_the_params(model, needle):
    def edit(p):
        p["model"].update({"base": "some/folder", **model})

    with pytest.raises(BadInputError, match=needle):
        config.validate(params_data(edit))


def test_the_optional_model_keys_leave_the_default_lineage_bytes_alone():
    """Absent keys are absent from `used()`: the embedded default's lineage records (and so its
    model folders' hashes) are what they were before the keys existed."""
    used = config.StageParams(config.validate(params_data()), ("model",)).used()
    assert set(used["model"]) == {"base", "trust_remote_code", "dtype", "quantization"}


def test_a_preset_that_does_not_exist_is_one_line():
    res = subprocess.run(
        [sys.executable, "scripts/run_preset.py", "no-such-preset", "--dry"], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "no such preset" in res.stderr and "smollm2-cpu" in res.stderr  # and which ones exist
    assert not (ROOT / ".cache" / "presets" / "no-such-preset").exists()
