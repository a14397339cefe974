"""Hostile uploads (issue 7): image-folder zips and checkpoints from the page.

Every bad file is an :class:`UploadError` whose message says what is wrong; nothing is written
outside the upload's temporary directory, which is gone afterwards; a checkpoint that would
run code never runs it. Colour layouts are converted (RGBA, CMYK, palette, grey+alpha; 16-bit
grey is scaled, not clipped), 32-bit integer/float images are refused. The last test drives
the page through Streamlit's AppTest: after a refusal the session keeps working.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import apptest  # noqa: F401  (puts app/ on sys.path)
from lcodec_app import uploads
from lcodec_app.uploads import UploadError, load_image_zip, load_uploaded_checkpoint


# ---------------------------------------------------------------- builders
def image_bytes(mode: str = "L", size=(16, 16), fmt: str = "PNG", value=None, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    if value is not None:
        image = Image.new(mode, size, value)
    elif mode in ("L", "RGB", "RGBA", "CMYK", "LA"):
        bands = len(mode)
        pixels = rng.integers(0, 256, (size[1], size[0], bands), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0] if bands == 1 else pixels, mode)
    else:
        image = Image.new(mode, size)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def make_zip(members: dict, compression=zipfile.ZIP_DEFLATED) -> bytes:
    """``members``: name -> bytes (or a ZipInfo -> bytes for special headers)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def faces(extra: dict | None = None, people=("ada", "bo"), per_person: int = 3) -> dict:
    members = {f"{p}/{k}.png": image_bytes(seed=10 * i + k)
               for i, p in enumerate(people) for k in range(per_person)}
    members.update(extra or {})
    return members


class WritesMarker:
    """A pickle whose loading would create a marker file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Every temporary directory goes under ``tmp_path/tmp``; afterwards ``tmp_path`` must hold
    nothing but that (now empty) folder: nothing escaped it and nothing was left behind."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    yield tmp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"], list(tmp_path.rglob("*"))
    assert list(tmp.iterdir()) == []


def refused(call, *patterns):
    with pytest.raises(UploadError) as caught:
        call()
    for pattern in patterns:
        assert caught.match(pattern), str(caught.value)
    return str(caught.value)


# ---------------------------------------------------------------- zips: what works
def test_a_good_zip_loads(sandbox):
    bundle = load_image_zip(make_zip(faces()), "faces.zip")
    assert bundle.classes == ["ada", "bo"] and bundle.input_shape == (1, 64, 64)
    assert bundle.name == "upload:faces.zip"


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "CMYK", "LA", "P", "1"])
def test_other_channel_layouts_are_converted_to_grey(sandbox, mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    ext = "jpg" if fmt == "JPEG" else "png"
    bundle = load_image_zip(make_zip(faces({f"cy/odd.{ext}": image_bytes(mode, fmt=fmt)},
                                           people=("ada", "bo"))), "z")
    assert bundle.input_shape == (1, 64, 64)
    assert torch.isfinite(bundle.train.images).all()


def test_sixteen_bit_grey_is_scaled_not_clipped(sandbox, tmp_path):
    """A 16-bit mid-grey image must read as mid-grey (Pillow's own convert clips it to white)."""
    from lcodec_core.data import _read_image
    image = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    path = tmp_path / "tmp" / "grey16.png"
    image.save(path)
    assert Image.open(path).mode.startswith("I;16")
    pixels = _read_image(path, 8, "L")
    path.unlink()
    assert abs(float(pixels.mean()) - 0.5) < 0.01


# ---------------------------------------------------------------- zips: refused
def test_zero_byte_and_non_zip_uploads(sandbox):
    refused(lambda: load_image_zip(b""), "empty", "0 bytes")
    refused(lambda: load_image_zip(b"PK\x03\x04 definitely not a zip"), "not a readable zip")
    refused(lambda: load_image_zip(image_bytes()), "not a readable zip")


@pytest.mark.parametrize("member, message", [
    (b"", "not a readable image"),                                            # zero-byte image
    (image_bytes()[:60], "not a readable image"),                             # truncated PNG
    (image_bytes("RGB", (64, 64), "JPEG")[:300], "not a readable image"),     # truncated JPEG
    (b"<html>not a picture</html>" * 10, "not a readable image"),            # text named .png
    (image_bytes(fmt="GIF")[:20], "not a readable image"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not a readable image"),  # EPS: no Ghostscript
])
def test_broken_or_disguised_images(sandbox, member, message):
    data = make_zip(faces({"bo/bad.png": member}))
    refused(lambda: load_image_zip(data), "bad.png", message)


def test_thirty_two_bit_images_are_refused(sandbox):
    tiff = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).random((8, 8)).astype(np.float32)).save(tiff, "TIFF")
    refused(lambda: load_image_zip(make_zip(faces({"bo/float.tif": tiff.getvalue()}))),
            "32-bit float", "8- or 16-bit")


def test_enormous_image_is_refused_before_decoding(sandbox):
    """12000 x 12000 grey is 144 MP in 140 kB of PNG (a decompression bomb)."""
    big = io.BytesIO()
    Image.new("L", (12000, 12000)).save(big, "PNG")
    data = make_zip(faces({"bo/huge.png": big.getvalue()}), zipfile.ZIP_STORED)
    refused(lambda: load_image_zip(data), "huge.png is 12000x12000 pixels", "limit")


@pytest.mark.parametrize("name", ["../evil.png", "../../evil.png", "ada/../../evil.png",
                                  "/tmp/evil.png", "\\evil.png", "C:/evil.png", "ada/.."])
def test_path_traversal_is_refused(sandbox, name):
    data = make_zip(faces({name: image_bytes()}))
    refused(lambda: load_image_zip(data), "unsafe path", "relative paths")


def test_symlink_members_are_refused(sandbox):
    link = zipfile.ZipInfo("ada/link.png")
    link.external_attr = 0o120777 << 16          # a symbolic link to /etc/passwd
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in faces().items():
            archive.writestr(name, data)
        archive.writestr(link, "/etc/passwd")
    refused(lambda: load_image_zip(out.getvalue()), "link", "not accepted")


def test_zip_bomb_is_refused(sandbox):
    data = make_zip(faces({"bo/bomb.png": bytes(20 * 2**20)}))   # 20 MB of zeros, ~1000x
    assert len(data) < 2**20
    refused(lambda: load_image_zip(data), "bomb.png", "zip bomb")


def test_too_many_files_and_too_many_bytes(sandbox, monkeypatch):
    monkeypatch.setattr(uploads, "MAX_FILES", 5)
    refused(lambda: load_image_zip(make_zip(faces())), "holds 6 images", "limit is 5")
    monkeypatch.setattr(uploads, "MAX_FILES", 5000)
    monkeypatch.setattr(uploads, "MAX_UNPACKED_BYTES", 1000)
    refused(lambda: load_image_zip(make_zip(faces())), "unpacks to", "limit")


def test_upload_size_limit(sandbox, monkeypatch):
    monkeypatch.setattr(uploads, "MAX_UPLOAD_BYTES", 100)
    refused(lambda: load_image_zip(make_zip(faces())), "the limit is")
    refused(lambda: load_uploaded_checkpoint(b"x" * 101), "the limit is")


def test_nested_zips_and_other_files_are_refused(sandbox):
    inner = make_zip(faces())
    refused(lambda: load_image_zip(make_zip(faces({"bo/inner.zip": inner}))), "inner.zip",
            "not an image")
    refused(lambda: load_image_zip(make_zip(faces({"run.sh": b"rm -rf /"}))), "not an image")


def test_corrupt_member_data_is_refused(sandbox):
    data = bytearray(make_zip(faces(), zipfile.ZIP_DEFLATED))
    start = data.index(b"ada/0.png") + len("ada/0.png") + 10   # inside the first member's data
    data[start:start + 40] = bytes(40)
    refused(lambda: load_image_zip(bytes(data)), "ada/0.png")


def test_one_identity_or_no_images(sandbox):
    refused(lambda: load_image_zip(make_zip(faces(people=("ada",)))), "at least 2")
    refused(lambda: load_image_zip(make_zip({"ada/": b""})), "no images")


# ---------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def logreg_checkpoint():
    from lcodec_models import Checkpoint, build_model, default_recipe
    torch.manual_seed(0)
    model = build_model("logreg", 3, (1, 8, 8))
    metadata = {"model": "logreg", "num_classes": 3, "input_shape": [1, 8, 8],
                "recipe": default_recipe("mnist", "logreg").to_dict(), "dataset": "mnist"}
    return Checkpoint(model, metadata)


def checkpoint_bytes(state_dict: dict, metadata: dict) -> bytes:
    out = io.BytesIO()
    torch.save({"format": "lcodec-checkpoint-v1", "state_dict": state_dict,
                "metadata": json.dumps(metadata)}, out)
    return out.getvalue()


def test_a_good_checkpoint_loads(sandbox, logreg_checkpoint, tmp_path):
    data = checkpoint_bytes(logreg_checkpoint.model.state_dict(), logreg_checkpoint.metadata)
    loaded = load_uploaded_checkpoint(data)
    assert loaded.state_hash() == logreg_checkpoint.state_hash()


def test_a_pickle_that_would_run_code_never_runs(sandbox, tmp_path):
    marker = tmp_path / "pwned"
    payloads = [pickle.dumps(WritesMarker(str(marker))),
                pickle.dumps({"format": "lcodec-checkpoint-v1", "state_dict": WritesMarker(str(marker)),
                              "metadata": "{}"})]
    buffer = io.BytesIO()
    torch.save({"format": "lcodec-checkpoint-v1", "state_dict": {"w": WritesMarker(str(marker))},
                "metadata": "{}"}, buffer)
    payloads.append(buffer.getvalue())                 # the torch zip container, code inside
    for data in payloads:
        message = refused(lambda: load_uploaded_checkpoint(data), "not a safe lcodec checkpoint",
                          "weights_only=True", "Nothing in it was executed")
        assert str(sandbox) not in message             # the temp path is not shown
    assert not marker.exists()


def test_checkpoint_with_wrong_keys_or_shapes_names_them(sandbox, logreg_checkpoint):
    state = dict(logreg_checkpoint.model.state_dict())
    meta = logreg_checkpoint.metadata
    name = next(iter(state))
    renamed = {("renamed." + k if k == name else k): v for k, v in state.items()}
    refused(lambda: load_uploaded_checkpoint(checkpoint_bytes(renamed, meta)),
            "does not match the architecture", f"missing keys \\['{name}'\\]",
            f"unexpected keys \\['renamed.{name}'\\]")
    reshaped = {k: (torch.zeros(3, 5) if k == name else v) for k, v in state.items()}
    refused(lambda: load_uploaded_checkpoint(checkpoint_bytes(reshaped, meta)),
            rf"{name}: expected \(3, 64\), found \(3, 5\)")


def test_checkpoint_metadata_cannot_ask_for_a_huge_model(sandbox, logreg_checkpoint):
    """The architecture is checked on the meta device first: no 10^10-parameter allocation."""
    meta = {**logreg_checkpoint.metadata, "input_shape": [1, 100_000, 100_000]}
    refused(lambda: load_uploaded_checkpoint(
        checkpoint_bytes(logreg_checkpoint.model.state_dict(), meta)),
        "does not match the architecture", "expected")


@pytest.mark.parametrize("change", [{"model": "vgg"}, {"num_classes": "many"},
                                    {"input_shape": [1, 8]}, {"num_classes": -3}])
def test_checkpoint_with_bad_metadata(sandbox, logreg_checkpoint, change):
    meta = {**logreg_checkpoint.metadata, **change}
    refused(lambda: load_uploaded_checkpoint(
        checkpoint_bytes(logreg_checkpoint.model.state_dict(), meta)), "metadata")


def test_checkpoint_with_non_finite_weights_is_refused(sandbox, logreg_checkpoint):
    state = {k: v.clone() for k, v in logreg_checkpoint.model.state_dict().items()}
    next(iter(state.values())).view(-1)[0] = float("nan")
    refused(lambda: load_uploaded_checkpoint(checkpoint_bytes(state, logreg_checkpoint.metadata)),
            "NaN or Inf", "non-finite weights")


def test_checkpoint_that_is_not_a_checkpoint(sandbox):
    refused(lambda: load_uploaded_checkpoint(b""), "empty")
    refused(lambda: load_uploaded_checkpoint(b"\x80\x04 garbage"), "not a safe lcodec checkpoint")
    buffer = io.BytesIO()
    torch.save({"format": "lcodec-checkpoint-v1", "state_dict": [1, 2], "metadata": "{}"}, buffer)
    refused(lambda: load_uploaded_checkpoint(buffer.getvalue()), "mapping names to tensors")
    buffer = io.BytesIO()
    torch.save(torch.zeros(3), buffer)
    refused(lambda: load_uploaded_checkpoint(buffer.getvalue()), "format")


def test_a_random_or_foreign_pt_file_is_refused_with_its_real_reason(sandbox):
    """Issue 13: a file that is no lcodec checkpoint is refused for what it is, not as a
    pickle of Python objects; a real pickle of Python objects keeps that reason."""
    def reason(data):
        message = refused(lambda: load_uploaded_checkpoint(data))
        assert str(sandbox) not in message
        return message

    junk = np.random.default_rng(13).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    for data in (junk, b"hello, I am a text file\n" * 10):
        message = reason(data)
        assert "not a torch checkpoint" in message and "neither a zip archive" in message
        assert "Python objects" not in message and "Nothing in it was executed" in message

    buffer = io.BytesIO()
    torch.save(torch.zeros(3), buffer)
    tensor = buffer.getvalue()
    message = reason(tensor)
    assert "not an lcodec checkpoint" in message and "a tensor of shape (3,)" in message
    assert "'format', 'state_dict', 'metadata'" in message and "Python objects" not in message

    message = reason(tensor[: len(tensor) // 2])                     # a truncated torch file
    assert "damaged zip archive" in message and "Python objects" not in message

    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(2), "step": 3}, buffer)
    message = reason(buffer.getvalue())
    assert "missing the keys 'format', 'state_dict', 'metadata'" in message
    assert "its keys: 'weights', 'step'" in message

    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(2, 2).state_dict(), buffer)
    assert "a bare state_dict (2 tensors)" in reason(buffer.getvalue())

    message = reason(make_zip({"notes/readme.txt": b"hi"}))          # a zip, but not torch's
    assert "no data.pkl" in message and "notes/readme.txt" in message

    message = reason(pickle.dumps({"a": [1, 2, 3]}))                 # plain data, pickled
    assert "plain Python pickle" in message and "Python objects" not in message


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_pickled_python_objects_keep_their_reason(sandbox, tmp_path, protocol):
    marker = tmp_path / "pwned"
    data = pickle.dumps(WritesMarker(str(marker)), protocol=protocol)
    message = refused(lambda: load_uploaded_checkpoint(data), "not a safe lcodec checkpoint",
                      "holds Python objects other than tensors", "Nothing in it was executed")
    assert "system" in message                                       # it names the object
    assert not marker.exists()


# ---------------------------------------------------------------- the page keeps working
def test_the_page_refuses_hostile_uploads_and_keeps_working(trained_small_cnn, tmp_path):
    from apptest import start_app
    from lcodec_models import state_hash
    base = state_hash(trained_small_cnn[0].model)
    marker = tmp_path / "pwned"
    big = io.BytesIO()
    Image.new("L", (12000, 12000)).save(big, "PNG")
    hostile = [
        ("empty.zip", b""),
        ("bomb.zip", make_zip(faces({"bo/bomb.png": bytes(20 * 2**20)}))),
        ("huge.zip", make_zip(faces({"bo/huge.png": big.getvalue()}), zipfile.ZIP_STORED)),
        ("evil.pt", pickle.dumps(WritesMarker(str(marker)))),
        ("empty.pt", b""),
    ]
    at = start_app()
    at.switch_page("views/model_data.py").run()
    for name, data in hostile:
        index = 1 if name.endswith(".pt") else 0
        at.get("file_uploader")[index].upload(name, data).run()
        at.button(key="md_use_upload").click().run()
        assert not at.exception, (name, [e.value for e in at.exception])
        assert any("Upload refused" in e.value for e in at.error), name
        at.get("file_uploader")[index].set_value(None)
        at.run()
    assert not marker.exists()
    assert at.session_state["workbench"].key.dataset == "olivetti"
    assert at.session_state["workbench"].base_hash == base
    for page in ("views/start.py", "views/forget.py"):
        at.switch_page(page).run()
        assert not at.exception and not at.error
