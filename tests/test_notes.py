"""report/notes.py: the lines under the report table that say what the figures mean."""

from __future__ import annotations

from mnist_tflite.report.notes import finetune_notes, int8_note


def test_int8_note_says_what_int8_buys_on_this_cpu():
    rows = [
        {
            "name": "float32",
            "status": "ok",
            "throughput_ips": 20_000.0,
            "size_bytes": 140_000,
            "accuracy": 0.987,
        },
        {"name": "int8", "status": "ok", "throughput_ips": 50_000.0, "size_bytes": 42_000, "accuracy": 0.986},
    ]
    vnni = int8_note(rows, {"cpu_flags": ["avx2", "fma", "avx512f", "avx512_vnni"]})
    assert vnni.startswith("int8 on this CPU (AVX-512, VNNI: avx512_vnni) buys speed: 2.50x")
    assert "3.3x smaller" in vnni and "-0.10 accuracy points" in vnni
    rows[1]["throughput_ips"] = 15_000.0
    slow = int8_note(rows, {"cpu_flags": ["avx2", "fma"]})
    assert "(AVX2, no VNNI) costs speed: 0.75x" in slow
    assert int8_note(rows[:1], {"cpu_flags": []}) is None


def test_finetune_notes_take_their_figures_from_the_rows():
    rows = [
        {"name": "int8", "status": "ok", "size_bytes": 9_024, "zip_bytes": 7_001},
        {
            "name": "pruned80-int8",
            "status": "ok",
            "training": "prune",
            "sparsity": 0.8,
            "size_bytes": 9_030,
            "zip_bytes": 4_321,
        },
    ]
    notes = finetune_notes(rows)
    assert len(notes) == 2 and notes[0].startswith("pruned80-int8: fine-tuned")
    assert "pruned80-int8 (80 % zeros) 9,030 bytes, zipped 4,321" in notes[1]
    assert "int8 9,024 bytes, zipped 7,001" in notes[1] and "42,080" not in notes[1]
    assert finetune_notes([r for r in rows if r["name"] == "int8"]) == []
