"""The synthetic generators: the 'offsets' files pinned, the 'mixed' planted effects
each of the form its docstring states, both read back by the real reader."""

from __future__ import annotations

import hashlib
import pathlib

import numpy as np
import pytest

from cdds_jax.data import read_split, synthetic
from cdds_jax.data.synthetic import draw

SMALL = {"train": 12, "dev": 4}


def _digest(root: pathlib.Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "meta.json":
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_offsets_generator_files_are_unchanged(tmp_path):
    # The data files of the first generator (the one the earlier demo numbers were
    # measured on), as they were before the generator became a package.
    root = synthetic.write_feature_store(
        tmp_path / "a", seed=3, num_images={"train": 40, "dev": 8, "test": 8}
    )
    assert _digest(root) == (
        "76f4a2e2c346aa865d27566a80a37cf4f2573dd0a97dda40d2d7e3248efb771f"
    )


def _mixed(tmp_path, name="m", **spec):
    return synthetic.write_feature_store(
        tmp_path / name, seed=5, num_images=SMALL, generator="mixed", **spec
    )


def test_mixed_store_is_read_by_the_reader_and_deterministic(tmp_path):
    a, b = _mixed(tmp_path, "a"), _mixed(tmp_path, "b")
    assert _digest(a) == _digest(b)
    c = synthetic.write_feature_store(
        tmp_path / "c", seed=6, num_images=SMALL, generator="mixed"
    )
    assert _digest(a) != _digest(c)
    split = read_split("features", a, "train")
    assert split.num_images == 12 and split.num_captions == 60
    assert split.image(0).shape == (16, 64)
    assert split.meta["generator"]["generator"] == "mixed"
    assert split.meta["generator"]["shape_share"] == 0.3
    # Adding a split leaves the others as they were.
    d = synthetic.write_feature_store(
        tmp_path / "d", seed=5, num_images={**SMALL, "test": 4}, generator="mixed"
    )
    for name in ("images.npy", "captions.npy", "captions.txt"):
        assert (a / "train" / name).read_bytes() == (d / "train" / name).read_bytes()


def _clean_spec(**scales) -> synthetic.SyntheticSpec:
    zero = dict(
        noise=0.0,
        colour_scale=0.0,
        syntax_scale=0.0,
        spread_scale=0.0,
        token_scale=0.0,
        gain_scale=0.0,
        background_prob=0.0,
    )
    return synthetic.SyntheticSpec(generator="mixed", **{**zero, **scales})


def _draw(spec, seed=2, n=6):
    world = draw.draw_world(seed, spec, spec.text_dim)
    return world, draw.draw_split("train", n, seed=seed, world=world, spec=spec)


def test_mixed_concepts_sit_in_permuted_columns_with_location_and_shape():
    spec = _clean_spec(shape_share=0.36)
    world, data = _draw(spec)
    k = spec.latent_dim
    # Each modality's columns are its own permutation of the latent dimensions.
    for src, dim in ((world.src_v, spec.image_dim), (world.src_t, spec.text_dim)):
        np.testing.assert_array_equal(np.sort(src), np.sort(np.arange(dim) % k))
    assert not np.array_equal(world.src_v[: spec.text_dim], world.src_t)
    # Every image token is (a e_c + b s h_c)[src_v] for one concept (no nuisance).
    a, b = np.sqrt(1 - 0.36), np.sqrt(0.36)
    candidates = np.concatenate(
        [a * world.concepts + b * world.shapes, a * world.concepts - b * world.shapes]
    )[:, world.src_v]
    for token in data["images"].reshape(-1, spec.image_dim):
        assert np.abs(candidates - token).max(axis=1).min() < 1e-9
    # Caption content words carry their own concept the same way, in the text columns.
    words = data["text"][0].split()
    positions = [i for i, w in enumerate(words) if any(ch.isdigit() for ch in w)]
    assert positions
    for i in positions:
        c = int("".join(ch for ch in words[i] if ch.isdigit()))
        got = data["captions"][0, i]
        want = [(a * world.concepts[c] + sg * b * world.shapes[c])[world.src_t]
                for sg in (-1.0, 1.0)]  # fmt: skip
        assert min(np.abs(got - w).max() for w in want) < 1e-9


def test_mixed_shape_part_is_invisible_to_the_token_mean():
    # Shape only: the +- pattern of a concept averages out over many tokens.
    spec = _clean_spec(shape_share=1.0)
    spec = synthetic.SyntheticSpec(
        **{**spec.__dict__, "num_tokens": 400, "concepts_per_image": 1}
    )
    _, data = _draw(spec, n=3)
    mean = data["images"].mean(axis=1)  # [N, D]
    spread = data["images"].std(axis=1)
    assert np.abs(mean).max() < 0.25 * spread.mean()


@pytest.mark.parametrize(
    "scale, check",
    [
        ("colour_scale", "offset"),
        ("gain_scale", "gain"),
        ("token_scale", "token"),
        ("spread_scale", "spread"),
    ],
)
def test_each_mixed_nuisance_has_its_documented_form(scale, check):
    # The nuisances are drawn whatever their scale, so both draws share every number.
    _, clean = _draw(_clean_spec())
    _, noisy = _draw(_clean_spec(**{scale: 0.7}))
    x, x0 = noisy["images"], clean["images"]
    delta = x - x0  # [N, P, D]
    if check == "offset":  # one vector per sample, the same for all its tokens
        np.testing.assert_allclose(delta, delta[:, :1, :] + 0 * delta, atol=1e-12)
        assert np.abs(delta).max() > 0.1
        # Per-column centring over tokens cancels it exactly.
        centred = lambda z: z - z.mean(axis=1, keepdims=True)
        np.testing.assert_allclose(centred(x), centred(x0), atol=1e-12)
    elif check == "gain":  # one factor per sample and column
        ratio = np.divide(x, x0, out=np.ones_like(x), where=np.abs(x0) > 1e-9)
        on = np.abs(x0) > 1e-9
        for n in range(x.shape[0]):
            for d in range(x.shape[2]):
                r = ratio[n, on[n, :, d], d]
                if r.size:
                    np.testing.assert_allclose(r, r[0], rtol=1e-9)
        assert np.abs(np.log(ratio[on])).max() > 0.05
    elif check == "token":  # one scalar per token, the same for all columns
        np.testing.assert_allclose(delta, delta[:, :, :1] + 0 * delta, atol=1e-12)
        assert np.abs(delta).max() > 0.1
    else:  # rank one per sample: token coefficient x sample direction
        for n in range(x.shape[0]):
            s = np.linalg.svd(delta[n], compute_uv=False)
            assert s[1] < 1e-9 * s[0] and s[0] > 0.1


def test_spec_errors_name_the_field():
    with pytest.raises(ValueError, match="generator"):
        synthetic.SyntheticSpec(generator="fancy")
    with pytest.raises(ValueError, match="latent_dim"):
        synthetic.SyntheticSpec(generator="mixed", latent_dim=0)
    with pytest.raises(ValueError, match="shape_share"):
        synthetic.SyntheticSpec(shape_share=1.5)
