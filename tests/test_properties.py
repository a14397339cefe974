"""Property-based tests (hypothesis, issue 7): L-CODEC / L-FOCI on arbitrary inputs and the
upload parser on arbitrary bytes and zip member names.

Invariances checked exactly (same seed):
- codec depends on y only through its ranks: any strictly increasing transform of y gives the
  same value (ties kept);
- codec uses Euclidean nearest neighbours of (x, z), so it is invariant when x and z are scaled
  together by a power of two (exact in floating point, the tie-breaking jitter scales too). A
  nonlinear increasing transform of one column changes the distances, so it is not checked;
- foci standardises each column first, so scaling any column by its own power of two changes
  nothing.
Degenerate input (constant y, NaN/Inf, m < 3, lengths that differ) is a ``ValueError``, never
another exception or a NaN result. The upload parser raises only ``UploadError`` and never
writes outside its temporary directory.
"""
from __future__ import annotations

import io
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lcodec_core.dependence import STOP_REASONS, codec, foci

import apptest  # noqa: F401  (puts app/ on sys.path)
from lcodec_app.uploads import UploadError, load_image_zip, load_uploaded_checkpoint

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
moderate = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
levels = st.integers(-50, 50).map(float)          # small integers: ties, exact arithmetic


def not_constant(y) -> bool:
    return not (y == y[0]).all()


@st.composite
def codec_problem(draw):
    m = draw(st.integers(3, 30))
    y = draw(hnp.arrays(np.float64, m, elements=levels))
    assume(not_constant(y))
    z = draw(hnp.arrays(np.float64, (m, draw(st.integers(1, 3))), elements=moderate | levels))
    x = draw(st.none() | hnp.arrays(np.float64, (m, draw(st.integers(1, 2))), elements=moderate | levels))
    return y, z, x


def codec_or_undefined(y, z, x, seed):
    """codec's value, or None for the documented conditional 0/0."""
    try:
        return codec(y, z, x, rng=seed)
    except ValueError as error:
        assert x is not None and "undefined (0/0)" in str(error), str(error)
        return None


# ---------------------------------------------------------------- codec
@settings(max_examples=40, **SETTINGS)
@given(codec_problem(), st.integers(0, 2**31 - 1),
       st.sampled_from([lambda y: y ** 3 + 5 * y, lambda y: np.exp(y / 25), lambda y: 2 * y - 7]))
def test_codec_is_invariant_under_increasing_transforms_of_y(problem, seed, transform):
    y, z, x = problem
    transformed = transform(y)
    assert (np.argsort(transformed, kind="stable") == np.argsort(y, kind="stable")).all()
    assert codec_or_undefined(transformed, z, x, seed) == codec_or_undefined(y, z, x, seed)


@settings(max_examples=40, **SETTINGS)
@given(codec_problem(), st.integers(0, 2**31 - 1), st.integers(-20, 20))
def test_codec_is_invariant_under_a_common_power_of_two_scale_of_x_and_z(problem, seed, exponent):
    y, z, x = problem
    scale = 2.0 ** exponent
    scaled_x = None if x is None else x * scale
    assert codec_or_undefined(y, z * scale, scaled_x, seed) == codec_or_undefined(y, z, x, seed)


@settings(max_examples=40, **SETTINGS)
@given(codec_problem(), st.integers(0, 2**31 - 1))
def test_codec_values_are_finite_and_at_most_one(problem, seed):
    y, z, x = problem
    value = codec_or_undefined(y, z, x, seed)
    if value is not None:
        assert np.isfinite(value)
        if x is None:
            assert value <= 1.0 + 1e-12


@settings(max_examples=40, **SETTINGS)
@given(st.integers(3, 20).flatmap(lambda m: st.tuples(
    hnp.arrays(np.float64, m, elements=levels),
    hnp.arrays(np.float64, (m, 2), elements=moderate | levels))),
    st.sampled_from(["constant_y", "nan_y", "inf_z", "short_z", "few_rows", "nan_x"]))
def test_codec_degenerate_input_is_a_value_error(problem, defect):
    y, z = problem
    x = None
    if defect == "constant_y":
        y = np.full_like(y, 3.0)
    elif defect == "nan_y":
        y = y.copy()
        y[len(y) // 2] = np.nan
    elif defect == "inf_z":
        z = z.copy()
        z[0, 1] = np.inf
    elif defect == "short_z":
        z = z[:-1]
    elif defect == "few_rows":
        y, z = y[:2], z[:2]
    else:
        x = np.full((len(y), 1), np.nan)
    try:
        value = codec(y, z, x, rng=0)
    except ValueError:
        return
    raise AssertionError(f"{defect}: expected ValueError, got {value}")


# ---------------------------------------------------------------- foci
@st.composite
def foci_problem(draw):
    m = draw(st.integers(4, 40))
    d = draw(st.integers(1, 6))
    features = draw(hnp.arrays(np.float64, (m, d), elements=moderate | levels))
    assume((features != features[0]).any(axis=0).all())          # no constant column
    y = draw(hnp.arrays(np.float64, m, elements=levels))
    assume(not_constant(y))
    return y, features


@settings(max_examples=40, **SETTINGS)
@given(foci_problem(), st.integers(0, 2**31 - 1), st.none() | st.integers(1, 4))
def test_foci_returns_valid_distinct_indices(problem, seed, max_features):
    y, features = problem
    result = foci(y, features, max_features=max_features, rng=seed)
    assert len(result.selected) == len(set(result.selected)) == len(result.scores)
    assert all(0 <= j < features.shape[1] for j in result.selected)
    assert max_features is None or len(result.selected) <= max_features
    assert all(np.isfinite(s) and s > 0 for s in result.scores)
    assert result.stopped_because in STOP_REASONS


@settings(max_examples=30, **SETTINGS)
@given(foci_problem(), st.integers(0, 2**31 - 1), st.data())
def test_foci_is_invariant_under_per_column_power_of_two_scales(problem, seed, data):
    y, features = problem
    exponents = data.draw(hnp.arrays(np.int64, features.shape[1], elements=st.integers(-10, 10)))
    scaled = features * 2.0 ** exponents
    first, second = foci(y, features, rng=seed), foci(y, scaled, rng=seed)
    assert first.selected == second.selected and first.scores == second.scores


@settings(max_examples=30, **SETTINGS)
@given(foci_problem(), st.sampled_from(["constant_y", "nan_feature", "constant_column", "short_y",
                                        "no_columns", "bad_max"]))
def test_foci_degenerate_input_is_a_value_error(problem, defect):
    y, features = problem
    kwargs = {}
    if defect == "constant_y":
        y = np.zeros_like(y)
    elif defect == "nan_feature":
        features = features.copy()
        features[-1, 0] = np.nan
    elif defect == "constant_column":
        features = np.column_stack([features, np.ones(len(y))])
    elif defect == "short_y":
        y = y[:-1]
    elif defect == "no_columns":
        features = features[:, :0]
    else:
        kwargs["max_features"] = 0
    try:
        result = foci(y, features, rng=0, **kwargs)
    except ValueError:
        return
    raise AssertionError(f"{defect}: expected ValueError, got {result}")


# ---------------------------------------------------------------- upload parser
NEST = ("d1", "d2", "d3", "tmp")


@contextmanager
def sandboxed_tempdir():
    """Temporary directories go into ``root/d1/d2/d3/tmp``; afterwards ``root`` must hold that
    chain of folders and nothing else (a member escaping by up to four ``..`` would show)."""
    root = Path(tempfile.mkdtemp(prefix="lcodec-prop-"))
    folder = root.joinpath(*NEST)
    folder.mkdir(parents=True)
    previous, tempfile.tempdir = tempfile.tempdir, str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = previous
        found = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        expected = sorted(str(Path(*NEST[:k])) for k in range(1, len(NEST) + 1))
        for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        root.rmdir()
        assert found == expected, f"written outside the upload's temp dir or left behind: {found}"


def tiny_png(seed: int) -> bytes:
    from PIL import Image
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


GOOD_MEMBERS = {f"{p}/{k}.png": tiny_png(10 * i + k) for i, p in enumerate("ab") for k in range(2)}


def good_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in GOOD_MEMBERS.items():
            archive.writestr(name, data)
    return out.getvalue()


def parse_zip(data: bytes) -> None:
    with sandboxed_tempdir():
        try:
            load_image_zip(data, "upload.zip")
        except UploadError:
            pass


@settings(max_examples=60, **SETTINGS)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_as_a_zip_raise_only_upload_errors(data):
    parse_zip(data)


@settings(max_examples=60, **SETTINGS)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_as_a_checkpoint_raise_only_upload_errors(data):
    with sandboxed_tempdir():
        try:
            load_uploaded_checkpoint(data)
        except UploadError:
            pass


@settings(max_examples=40, **SETTINGS)
@given(st.data())
def test_a_zip_with_corrupted_bytes_raises_only_upload_errors(data):
    raw = bytearray(good_zip())
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    parse_zip(bytes(raw))


member_name = st.lists(st.sampled_from(["a", "b", ".", "/", "\\", ":", "_", "~", " ", "..", "\x00",
                                          "é", "C:", "evil", "x.png", "y.PNG", "/"]),
                       min_size=1, max_size=12).map("".join)


@pytest.mark.filterwarnings("ignore:Duplicate name")
@settings(max_examples=80, **SETTINGS)
@given(st.lists(member_name, min_size=1, max_size=4), st.booleans())
def test_arbitrary_member_names_stay_inside_the_temp_dir(names, with_good_members):
    """Any member names (traversal, absolute, drive letters, NUL, backslashes): the parser
    returns a data set or raises UploadError, and writes nothing outside its temp dir."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        if with_good_members:
            for name, content in GOOD_MEMBERS.items():
                archive.writestr(name, content)
        for k, name in enumerate(names):
            try:
                archive.writestr(name, tiny_png(k))
            except (IndexError, ValueError):  # zipfile itself cannot write this name (e.g. "\x00")
                assume(False)
    parse_zip(out.getvalue())
