"""`mnist-tflite compile --target wasm`: the generated C as WebAssembly (plain and SIMD128),
run in Node through the generated ES module, must answer bit for bit like the TFLM interpreter."""

from __future__ import annotations

from tests.conftest import one_error_line, require, run_cli

require("tflite_micro")  # before the imports that need them

import json
import shutil
import subprocess

import pytest

from mnist_tflite.micro.aot import wasm
from tests.test_compile import _unknown_op

needs_wasm = pytest.mark.skipif(wasm.toolchain_problem() is not None, reason=wasm.APT_COMMAND)
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="needs node")


@pytest.fixture(scope="module")
def compiled(models_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("wasm") / "web"
    res = run_cli(
        "compile", str(models_dir / "int8.tflite"), "--target", "wasm", "--out", str(out), "--images", "300"
    )
    assert res.returncode == 0, res.stderr
    return out, res


@needs_wasm
@needs_node
def test_both_builds_match_tflm_row_for_row(compiled):
    out, res = compiled
    summary = json.loads((out / "compile.json").read_text())
    for kind in ("plain", "simd"):
        part = summary["verification"][kind]
        assert part["rows_identical"] == part["images"] == 300 and part["rows_differing"] == 0, part
        assert part["accuracy"] > 0.95
        assert f"300/300 rows identical ({summary['wasm'][kind]['file']} in Node" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == summary["files"]
    # the SIMD build really uses SIMD128 (0xfd prefix opcodes); the plain one never does
    simd, plain = (out / "mnist_model.simd.wasm").read_bytes(), (out / "mnist_model.wasm").read_bytes()
    assert wasm.section_sizes(simd)["code"] > wasm.section_sizes(plain)["code"]
    assert b"\xfd" in simd and simd != plain


@needs_wasm
@needs_node
def test_module_pick_and_bad_input(compiled, tmp_path):
    """``load()`` with no argument picks the SIMD build in Node 20; classify refuses a wrong array."""
    out, _ = compiled
    script = tmp_path / "probe.mjs"
    script.write_text(
        f"import * as m from {json.dumps((out / 'mnist_model.mjs').as_uri())};\n"
        "const model = await m.load();\n"
        "const y = model.classify(new Int8Array(784).fill(-128));\n"
        "let refused = false;\n"
        "try { model.classify(new Float32Array(784)); } catch (e) { refused = e instanceof TypeError; }\n"
        "console.log(JSON.stringify({simd: model.simd, n: y.length, refused, input: model.input}));\n"
    )
    res = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["simd"] is True and doc["n"] == 10 and doc["refused"] is True
    assert doc["input"]["zeroPoint"] == -128 and 0 < doc["input"]["scale"] < 1


@pytest.mark.parametrize(
    "case, expected", [("float32", "not an int8 model"), ("unknown-op", "unsupported op TANH")]
)
def test_models_that_do_not_compile_are_one_line(case, expected, models_dir, tmp_path):
    model = models_dir / "float32.tflite"
    if case == "unknown-op":
        model = tmp_path / "tanh.tflite"
        model.write_bytes(_unknown_op((models_dir / "int8.tflite").read_bytes()))
    out = tmp_path / "web"
    res = run_cli("compile", str(model), "--target", "wasm", "--out", str(out))
    line = one_error_line(res.stderr)
    assert res.returncode == 2 and expected in line, line
    assert not out.exists() and not list(tmp_path.glob(".web*"))


def test_missing_toolchain_names_the_apt_command(models_dir, tmp_path):
    out = tmp_path / "web"
    res = run_cli("compile", str(models_dir / "int8.tflite"), "--target", "wasm", "--out", str(out),
                  env={"PATH": str(tmp_path)})  # fmt: skip
    line = one_error_line(res.stderr)
    assert res.returncode == 2 and "clang and wasm-ld" in line and "apt-get install clang lld" in line, line
    assert not out.exists()


def test_section_sizes_reads_a_module():
    # (module (func)) with an empty body: type, function and code sections
    module = bytes([0, 97, 115, 109, 1, 0, 0, 0, 1, 4, 1, 96, 0, 0, 3, 2, 1, 0, 10, 4, 1, 2, 0, 11])
    assert wasm.section_sizes(module) == {"type": 4, "function": 2, "code": 4}
    with pytest.raises(wasm.MnistTfliteError):
        wasm.section_sizes(b"not wasm")


def test_export_web_refuses_what_it_did_not_make(models_dir, tmp_path):
    res = run_cli("export-web", str(models_dir / "float32.tflite"), "--out", str(tmp_path / "site"))
    line = one_error_line(res.stderr)
    assert res.returncode == 2 and "not an int8 model" in line and not (tmp_path / "site").exists(), line
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    res = run_cli("export-web", str(models_dir / "int8.tflite"), "--out", str(mine), "--force")
    line = one_error_line(res.stderr)
    assert res.returncode == 2 and "not written by export-web (no site.json)" in line, line
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


@needs_wasm
def test_serve_hands_the_page_its_compiled_model(tmp_path):
    require("fastapi", "uvicorn")
    from fastapi.testclient import TestClient

    from mnist_tflite.serve.app import create_app
    from tests.test_serve import make_run_dir

    client = TestClient(create_app(make_run_dir(tmp_path / "run")))
    doc = client.get("/api/models").json()
    assert doc["device"] == {"variant": "int8", "module": "wasm/mnist_model.mjs"}
    module = client.get("/wasm/mnist_model.mjs")
    assert module.status_code == 200 and "export async function load" in module.text
    assert module.headers["content-type"].startswith("text/javascript")
    code = client.get("/wasm/mnist_model.simd.code.wasm")
    data = client.get("/wasm/mnist_model.data.bin")
    assert code.content[:4] == b"\0asm" and len(data.content) > 30_000
    assert client.get("/wasm/nothing.wasm").status_code == 404
    assert "'wasm-unsafe-eval'" in client.get("/").headers["content-security-policy"]
    float_only = TestClient(create_app(make_run_dir(tmp_path / "f", names=("float32",)))).get("/api/models")
    assert float_only.json()["device"] is None and "not an int8 model" in float_only.json()["device_note"]
