"""Hub ids downloaded on first use (co2s.models.backbones.weights.hub), against a local server
that answers like the Hub (tests/hub_server.py): only the files a model or tokenizer needs, the
cache afterwards (offline too), pinned revisions, gated repositories, interrupted transfers and
the one-line errors of each failure."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from transformers import CLIPTokenizer, Dinov2Config, Dinov2Model, DINOv3ViTConfig, DINOv3ViTModel

from co2s.errors import CheckpointError
from co2s.models.backbones.weights import load_backbone_weights
from co2s.models.backbones.weights.hub import hub_snapshot, needed_files, parse_hub_source
from co2s.models.text_encoder import load_tokenizer
from tests.conftest import tiny_overrides
from tests.hub_server import SHA, TOKEN, FakeHub, closed_port_url
from tests.models.clip_text import bpe_merges, write_hf_vocab

REPO = "co2s-test/tiny-dinov2"
OLD_SHA = "0" * 39 + "1"
#: what a Hub repository holds besides what co2s reads: none of it may be requested
EXTRAS = ("pytorch_model.bin", "onnx/model.onnx", "flax_model.msgpack", "tf_model.h5", "README.md")


def tiny_dinov2(seed: int) -> Dinov2Model:
    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                          patch_size=16, image_size=32)
    return Dinov2Model(config).eval()


def tiny_dinov3(seed: int) -> DINOv3ViTModel:
    torch.manual_seed(seed)
    config = DINOv3ViTConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                             num_register_tokens=2, patch_size=16, image_size=32, rope_theta=100.0)
    return DINOv3ViTModel(config).eval()


def repo_files(model, folder: Path, shard: str | None = None) -> dict[str, bytes]:
    """A Hub repository of ``model``: its save_pretrained files and the extras of real repos."""
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    files["pytorch_model.bin"] = buffer.getvalue()
    files.update({"onnx/model.onnx": b"onnx" * 64, "flax_model.msgpack": b"flax" * 64,
                  "tf_model.h5": b"hdf5" * 64, "README.md": b"# tiny\n"})
    return files


def same_outputs(a, b, seed: int = 0) -> bool:
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return torch.equal(a(x).last_hidden_state, b(x).last_hidden_state)


def fetched(hub: FakeHub, repo_id: str = REPO, method: str = "GET") -> set[str]:
    return {name for m, _, name in hub.file_requests(repo_id) if m == method}


def leftovers(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.name.endswith(".incomplete")]


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


@pytest.fixture
def point_hub(monkeypatch, tmp_path):
    """Point huggingface_hub at a URL (its constants are read at import: patch them), with no
    token from the environment or the user's token file, and offline mode off."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def point(url: str) -> None:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setattr(constants, "ENDPOINT", url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")

    return point


@pytest.fixture
def hub(point_hub):
    with FakeHub() as server:
        point_hub(server.url)
        yield server


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "hub-cache"


def load(source: str, cache: Path, kind: str = "dinov2"):
    return load_backbone_weights(kind, source, cache_dir=cache, overrides=tiny_overrides(kind))


# --------------------------------------------------------------------------------------------


def test_parse_and_the_files_a_load_needs():
    assert parse_hub_source("facebook/dinov2-base") == ("facebook/dinov2-base", None)
    assert parse_hub_source("owner/name@v1.0") == ("owner/name", "v1.0")
    assert parse_hub_source("owner/name@refs/pr/3") == ("owner/name", "refs/pr/3")
    assert parse_hub_source("owner/name@") is None and parse_hub_source("/abs/path") is None
    both = ["config.json", "model.safetensors", "pytorch_model.bin", "onnx/model.onnx", "flax_model.msgpack"]
    assert needed_files(REPO, both, "model") == ["config.json", "model.safetensors"]
    sharded = ["config.json", "model.safetensors.index.json", "model-00002-of-00002.safetensors",
               "model-00001-of-00002.safetensors", "pytorch_model.bin", "model.fp16.safetensors"]
    assert needed_files(REPO, sharded, "model") == ["config.json", "model.safetensors.index.json",
                                                   "model-00001-of-00002.safetensors",
                                                   "model-00002-of-00002.safetensors"]
    bins = ["config.json", "pytorch_model.bin.index.json", "pytorch_model-00001-of-00001.bin", "tf_model.h5"]
    assert needed_files(REPO, bins, "model") == bins[:3]
    assert needed_files(REPO, ["config.json", "pytorch_model.bin"], "model") == ["config.json", "pytorch_model.bin"]
    with pytest.raises(CheckpointError, match="no model.safetensors or pytorch_model.bin"):
        needed_files(REPO, ["config.json", "onnx/model.onnx"], "model")
    with pytest.raises(CheckpointError, match="no config.json"):
        needed_files(REPO, ["model.safetensors"], "model")
    clip = ["config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json"]
    assert needed_files(REPO, clip, "tokenizer") == ["vocab.json", "merges.txt", "tokenizer.json",
                                                    "tokenizer_config.json", "special_tokens_map.json"]
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        needed_files(REPO, ["vocab.json", "config.json"], "tokenizer")


def test_first_use_downloads_only_what_the_model_needs(hub, cache, tmp_path):
    source = tiny_dinov2(0)
    hub.add_commit(REPO, repo_files(source, tmp_path / "saved"), SHA, ref="main")
    model, reference, family = load(REPO, cache)
    assert same_outputs(model, source)
    assert fetched(hub) == {"config.json", "model.safetensors"}
    assert {name for _, _, name in hub.file_requests(REPO)} == {"config.json", "model.safetensors"}
    assert family.origin == {"hub": REPO, "revision": SHA}
    assert family.record()["origin"] == {"hub": REPO, "revision": SHA}
    snapshot = cache / "models--co2s-test--tiny-dinov2" / "snapshots" / SHA
    assert sorted(p.name for p in snapshot.iterdir()) == ["config.json", "model.safetensors"]
    assert not leftovers(cache)


def test_sharded_safetensors_are_fetched_shard_by_shard(hub, cache, tmp_path):
    source = tiny_dinov2(0)
    files = repo_files(source, tmp_path / "saved", shard="200KB")
    shards = {f for f in files if f.startswith("model-")}
    assert len(shards) >= 2 and "model.safetensors.index.json" in files
    hub.add_commit(REPO, files, SHA, ref="main")
    model, *_ = load(REPO, cache)
    assert same_outputs(model, source)
    assert fetched(hub) == {"config.json", "model.safetensors.index.json", *shards}


def test_second_load_comes_from_the_cache(hub, cache, tmp_path, point_hub, monkeypatch):
    source = tiny_dinov2(0)
    hub.add_commit(REPO, repo_files(source, tmp_path / "saved"), SHA, ref="main")
    load(REPO, cache)
    before = len(hub.requests(REPO))

    online, *_ = load(REPO, cache)  # online: which commit main is (twice: co2s, snapshot_download), no file
    assert same_outputs(online, source)
    assert [r.path for r in hub.requests(REPO)[before:]] == [f"/api/models/{REPO}",
                                                             f"/api/models/{REPO}/revision/main"]
    before = len(hub.requests())

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline, _, family = load(REPO, cache)
    assert same_outputs(offline, source) and family.origin == {"hub": REPO, "revision": SHA}
    assert len(hub.requests()) == before  # not one request

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub.stop()
    point_hub(closed_port_url())  # no network at all
    unreachable, _, family = load(REPO, cache)
    assert same_outputs(unreachable, source) and family.origin["revision"] == SHA

    # a cache that lost the weights is not taken for complete
    blob = (cache / "models--co2s-test--tiny-dinov2" / "snapshots" / SHA / "model.safetensors").resolve()
    blob.unlink()
    with pytest.raises(CheckpointError) as exc:
        load(REPO, cache)
    message = one_line(exc)
    assert message.startswith(f"{REPO}: it is not in the Hugging Face cache ({cache})")
    assert "cannot be reached (ConnectError" in message


def test_revision_is_pinned(hub, cache, tmp_path, monkeypatch):
    old, new = tiny_dinov2(1), tiny_dinov2(2)
    assert not same_outputs(old, new)
    hub.add_commit(REPO, repo_files(old, tmp_path / "old"), OLD_SHA, ref="v1")
    hub.add_commit(REPO, repo_files(new, tmp_path / "new"), SHA, ref="main")

    model, _, family = load(f"{REPO}@{OLD_SHA}", cache)
    assert same_outputs(model, old) and family.origin == {"hub": REPO, "revision": OLD_SHA}
    assert {rev for _, rev, _ in hub.file_requests(REPO)} == {OLD_SHA}
    assert [r.path for r in hub.requests(REPO) if r.path.startswith("/api/")] == \
        [f"/api/models/{REPO}/revision/{OLD_SHA}", f"/api/models/{REPO}/tree/{OLD_SHA}"]

    tagged, _, family = load(f"{REPO}@v1", cache)  # a tag: resolved to its commit, already cached
    assert same_outputs(tagged, old) and family.origin["revision"] == OLD_SHA
    assert f"/api/models/{REPO}/revision/v1" in [r.path for r in hub.requests(REPO)]

    latest, _, family = load(REPO, cache)
    assert same_outputs(latest, new) and family.origin["revision"] == SHA

    with pytest.raises(CheckpointError) as exc:
        load(f"{REPO}@nope", cache)
    assert one_line(exc).startswith(f"{REPO}: revision 'nope' not found")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # each revision is found offline
    assert same_outputs(load(f"{REPO}@v1", cache).model, old)
    assert same_outputs(load(REPO, cache).model, new)


def test_gated_repository(hub, cache, tmp_path, monkeypatch):
    repo = "co2s-test/dinov3-tiny"
    source = tiny_dinov3(0)
    hub.add_commit(repo, repo_files(source, tmp_path / "saved"), SHA, ref="main")
    hub.gate(repo)
    with pytest.raises(CheckpointError) as exc:
        load(repo, cache, "dinov3")
    message = one_line(exc)
    assert message.startswith(f"{repo}: gated repository")
    assert f"https://huggingface.co/{repo}" in message and "HF_TOKEN" in message and "hf auth login" in message
    assert "dinov3_vitb16_pretrain_lvd1689m-*.pth" in message and "docs/weights.md" in message
    assert hub.file_requests(repo) and all(r.status == 401 for r in hub.requests(repo) if "/resolve/" in r.path)
    assert not list(cache.rglob("model.safetensors")) and not leftovers(cache)

    monkeypatch.setenv("HF_TOKEN", "hf_not_the_right_one")
    with pytest.raises(CheckpointError) as exc:
        load(repo, cache, "dinov3")
    assert "the token in use (HF_TOKEN" in one_line(exc)

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    model, _, family = load(repo, cache, "dinov3")
    assert same_outputs(model, source) and family.origin == {"hub": repo, "revision": SHA}
    granted = [r for r in hub.requests(repo) if "/resolve/" in r.path and r.status == 200]
    assert {r.headers.get("authorization") for r in granted} == {f"Bearer {TOKEN}"}


def test_interrupted_download(hub, cache, tmp_path, monkeypatch):
    source = tiny_dinov2(0)
    files = repo_files(source, tmp_path / "saved")
    size = len(files["model.safetensors"])
    hub.add_commit(REPO, files, SHA, ref="main")

    # the connection drops halfway once: huggingface_hub resumes after the last whole chunk it
    # wrote (Range; chunks are 10 MB unless made smaller, as here)
    chunk = 64 * 1024
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", chunk)
    hub.drop_after(REPO, "model.safetensors", size // 2)
    model, *_ = load(REPO, cache)
    assert same_outputs(model, source)
    gets = [r for r in hub.requests(REPO) if r.method == "GET" and r.path.endswith("/model.safetensors")]
    resumed = size // 2 // chunk * chunk
    assert resumed > 0
    assert [(r.headers.get("range"), r.status) for r in gets] == [(None, 200), (f"bytes={resumed}-", 206)]
    stored = cache / "models--co2s-test--tiny-dinov2" / "snapshots" / SHA / "model.safetensors"
    assert stored.read_bytes() == files["model.safetensors"]
    assert not leftovers(cache)

    # it drops every time: one line, nothing partial left; the next run completes
    other = tmp_path / "other-cache"
    monkeypatch.setattr("huggingface_hub.file_download.time.sleep", lambda seconds: None)  # its retry pauses
    hub.drop_after(REPO, "model.safetensors", 0, times=6)
    with pytest.raises(CheckpointError) as exc:
        load(REPO, other)
    message = one_line(exc)
    assert message.startswith(f"{REPO}: the download stopped (RemoteProtocolError") and "run again" in message
    assert not leftovers(other)
    model, *_ = load(REPO, other)
    assert same_outputs(model, source)
    assert not leftovers(other)


def test_no_network_and_nothing_cached(point_hub, cache, monkeypatch):
    point_hub(closed_port_url())
    with pytest.raises(CheckpointError) as exc:
        load(REPO, cache)
    message = one_line(exc)
    assert message.startswith(f"{REPO}: it is not in the Hugging Face cache ({cache}), and nothing is downloaded")
    assert "cannot be reached (ConnectError" in message
    assert f"`hf download {REPO}`" in message and "HF_HUB_CACHE" in message and "local folder or file" in message

    with pytest.raises(CheckpointError, match=rf"`hf download {REPO} --revision v2`"):
        load(f"{REPO}@v2", cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match=r"nothing is downloaded: HF_HUB_OFFLINE is set; "):
        load(REPO, cache)


def test_repository_not_found(hub, cache):
    with pytest.raises(CheckpointError) as exc:
        load("co2s-test/absent", cache)
    message = one_line(exc)
    assert message.startswith(f"co2s-test/absent: no such repository on the Hub ({hub.url})")
    assert "HF_TOKEN" in message


def test_tokenizer_files_by_hub_id(hub, cache, tmp_path, monkeypatch):
    repo = "co2s-test/tiny-clip"
    folder = tmp_path / "tokenizer"
    write_hf_vocab(folder, bpe_merges(["a", "photo", "of", "building", "road"], total=2000))
    files = {name: (folder / name).read_bytes() for name in ("vocab.json", "merges.txt")}
    files.update({"config.json": b"{}", "model.safetensors": b"weights" * 64, "pytorch_model.bin": b"x" * 64,
                  "preprocessor_config.json": b"{}"})
    hub.add_commit(repo, files, SHA, ref="main")

    prompts = ["a photo of a building", "a photo of a road"]
    expected = CLIPTokenizer.from_pretrained(str(folder))(prompts)["input_ids"]
    tokenizer = load_tokenizer(repo, cache_dir=cache)
    assert tokenizer(prompts)["input_ids"] == expected
    assert fetched(hub, repo) == {"vocab.json", "merges.txt"}
    assert hub_snapshot(repo, cache, "tokenizer").revision == SHA

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = len(hub.requests())
    assert load_tokenizer(repo, cache_dir=cache)(prompts)["input_ids"] == expected
    assert len(hub.requests()) == before
    # the weights were never fetched: as a model the repository is not in the cache
    with pytest.raises(CheckpointError, match=rf"{repo}: it is not in the Hugging Face cache"):
        hub_snapshot(repo, cache, "model")


def test_a_missing_hub_id_stops_training_before_the_data_check(hub, cache, tmp_path, monkeypatch):
    """The Hub ids of the students are fetched first: a mistyped id is reported in seconds, not
    after the data check (which here would fail too, on a missing image)."""
    from co2s import api
    from tests.conftest import tiny_config_dict, write_tiny_dataset

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    root = write_tiny_dataset(tmp_path / "data")
    (root / "images" / "t0.png").unlink()  # the data check would stop on this
    raw = tiny_config_dict(root, tmp_path / "run")
    raw["model"] = {"name": "students", "students": [
        {"name": "dino", "backbone": {"kind": "dinov2", "weights": "co2s-test/absent"}, "guidance": "queries"}]}
    config = api.load_config([str(_yaml(tmp_path / "c.yaml", raw))])
    with pytest.raises(CheckpointError, match=r"^co2s-test/absent: no such repository on the Hub"):
        api.train(config, progress=False)
    assert [p.name for p in (tmp_path / "run").iterdir()] == [".co2s.lock"]  # nothing of a run


def _yaml(path: Path, raw: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(raw))
    return path
