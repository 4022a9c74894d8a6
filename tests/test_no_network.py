"""The engine works with the network unavailable: nothing is downloaded, nothing resolves names."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from dasr_annotator.engine.netguard import NetworkAccessAttempted, network_blocked

REPO = Path(__file__).resolve().parents[1]


def test_the_guard_blocks_connections_and_lookups_and_records_them():
    original_lookup, original_connect = socket.getaddrinfo, socket.socket.connect
    with network_blocked() as attempts:
        with pytest.raises(NetworkAccessAttempted):
            socket.getaddrinfo("example.org", 443)
        with pytest.raises(OSError):  # urllib wraps it, but it still fails and is recorded
            urllib.request.urlopen("http://192.0.2.1/weights.pth", timeout=1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            with pytest.raises(NetworkAccessAttempted):
                sock.connect_ex(("192.0.2.1", 80))
            with pytest.raises(NetworkAccessAttempted):
                sock.connect(("192.0.2.1", 80))
        local_a, local_b = socket.socketpair()  # local IPC stays allowed
        local_a.close(), local_b.close()
    assert any("example.org" in a for a in attempts) and any("192.0.2.1" in a for a in attempts)
    assert socket.getaddrinfo is original_lookup and socket.socket.connect is original_connect


def test_imageio_and_storage_work_offline(tmp_path):
    from PIL import Image

    from dasr_annotator.engine.store.imageio import image_size, load_image
    from dasr_annotator.engine.store.storage import atomic_write_json, read_json, user_cache_dir

    Image.new("RGB", (40, 30), (5, 6, 7)).save(tmp_path / "a.jpg")
    with network_blocked() as attempts:
        assert load_image(tmp_path / "a.jpg", max_side=20).rgb.shape == (15, 20, 3)
        assert image_size(tmp_path / "a.jpg") == (40, 30)
        atomic_write_json(tmp_path / "s.json", {"a": 1})
        assert read_json(tmp_path / "s.json") == {"a": 1}
        user_cache_dir()
    assert attempts == []


# Run in a fresh interpreter with the guard installed before anything else is imported, so
# import-time downloads (torch hub, model registries) are caught too. TORCH_HOME points at an
# empty folder: the embedded weights package alone must be enough.
_EXTRACT_OFFLINE = """
import json, sys
from dasr_annotator.engine.netguard import network_blocked
with network_blocked() as attempts:
    import torch
    torch.set_num_threads(1)
    from dasr_annotator.engine.dasr.extractor import Extractor
    from dasr_annotator.engine.store.imageio import load_image
    extractor = Extractor()
    image = load_image(sys.argv[1], max_side=extractor.max_side)
    regions = extractor.extract(image)
    descriptors = regions.descriptors()
print(json.dumps({"attempts": attempts, "regions": len(regions.regions), "dim": int(descriptors.shape[1]),
                  "expected_dim": extractor.config()["descriptor_dim"], "size": [regions.width, regions.height],
                  "image_size": [image.width, image.height], "weights": extractor.backbone.config().get("weights")}))
"""


def test_default_extractor_runs_with_the_network_blocked(dev_data, dev_manifest, tmp_path):
    pytest.importorskip("dasr_annotator.engine.dasr.extractor")
    first = dev_manifest["instances"][0]["images"][0]["file"]
    env = {"TORCH_HOME": str(tmp_path / "empty-torch-home"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", _EXTRACT_OFFLINE, str(dev_data / first)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["attempts"] == []
    assert result["regions"] > 0 and result["dim"] == result["expected_dim"]
    assert result["size"] == result["image_size"]
    assert "empty-torch-home" not in str(result["weights"])
