"""Device handling of the Extractor: a clear refusal for a missing GPU, and the OOM fallback."""
import logging

import numpy as np
import pytest
import torch

from dasr_annotator.engine.dasr.extractor import DeviceUnavailable, Extractor, resolve_device


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")
def test_cuda_without_a_gpu_is_refused_with_a_clear_message():
    with pytest.raises(DeviceUnavailable, match="--device cpu"):
        resolve_device("cuda")
    with pytest.raises(DeviceUnavailable, match="unknown device"):
        resolve_device("gpu0")


def test_gpu_out_of_memory_falls_back_step_by_step_to_the_cpu(monkeypatch, caplog):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(96, 128, 3), dtype=np.uint8)
    extractor = Extractor(device="cpu", max_side=128)
    expected = extractor.extract(image)

    # Pretend the extractor sits on a GPU that keeps running out of memory.
    real = extractor._extract_many
    calls = []

    def out_of_memory_on_gpu(images, batch_size):
        calls.append((extractor._device.type, batch_size, extractor.memory_budget >> 20))
        if extractor._device.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(images, batch_size)

    monkeypatch.setattr(extractor, "_extract_many", out_of_memory_on_gpu)
    extractor._device = torch.device("cuda")
    extractor.memory_budget = 4096 << 20
    with caplog.at_level(logging.WARNING, logger="dasr_annotator.engine.dasr.extractor"):
        got = extractor.extract(image)

    assert calls == [("cuda", None, 4096), ("cuda", 1, 4096), ("cuda", 1, 1024), ("cuda", 1, 256), ("cpu", 1, 64)]
    assert "continuing on the CPU" in caplog.text
    assert extractor.device == "cpu"
    assert [r.box for r in got.regions] == [r.box for r in expected.regions]
