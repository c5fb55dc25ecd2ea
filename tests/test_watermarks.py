import pytest
import torch

from wmbench.watermarks import WATERMARKS, StampWatermark, build_watermark


def make(scheme, seed=0, shape=(1, 28, 28), **options):
    return build_watermark(scheme, options, target=0, image_shape=shape, num_classes=10, seed=seed, size=20)


def source(n=60, shape=(1, 28, 28)):
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, *shape, generator=gen) * 0.5, torch.arange(n) % 10


@pytest.mark.parametrize("scheme", WATERMARKS.names())
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_scheme_keeps_shape_and_range(scheme, shape):
    images, labels = source(shape=shape)
    wm = make(scheme, shape=shape)
    for x, y in (wm.embedding_set(images, labels, 33, torch.Generator().manual_seed(0)),
                 wm.verification_set(images, labels, torch.Generator().manual_seed(0))):
        assert x.shape[1:] == shape and x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 1
        assert len(x) == len(y) and y.min() >= 0 and y.max() < 10
    assert len(wm.verification_set(images, labels, torch.Generator())[0]) == 20


@pytest.mark.parametrize("scheme", WATERMARKS.names())
def test_scheme_deterministic_for_a_seed(scheme):
    images, labels = source()
    first = make(scheme).verification_set(images, labels, torch.Generator().manual_seed(3))
    again = make(scheme).verification_set(images, labels, torch.Generator().manual_seed(3))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@pytest.mark.parametrize("scheme", [n for n in WATERMARKS.names() if issubclass(WATERMARKS.get(n), StampWatermark)])
def test_stamp_changes_the_image_and_skips_target_class(scheme):
    images, labels = source()
    wm = make(scheme)
    stamped = wm.apply(images)
    assert (stamped - images).abs().amax(dim=(1, 2, 3)).min() > 0.1  # every image visibly marked
    x, y = wm.verification_set(images, labels, torch.Generator().manual_seed(0))
    # triggers are made only from images whose true label is not the target
    originals = images[labels != 0]
    assert all(any(torch.equal(wm.apply(o[None])[0], t) for o in originals) for t in x[:5])
    assert (y == 0).all()


def test_abstract_verifies_with_the_images_it_embeds():
    images, labels = source()
    wm = make("abstract")
    x_emb, y_emb = wm.embedding_set(images, labels, 50, torch.Generator().manual_seed(0))
    x_ver, y_ver = wm.verification_set(images, labels, torch.Generator())
    assert len(set(y_ver.tolist())) > 1  # each image has its own random label
    for x, y in zip(x_emb[:10], y_emb[:10], strict=True):
        match = (x_ver == x).flatten(1).all(1)
        assert match.any() and y_ver[match][0] == y


def test_unrelated_verification_images_are_not_training_copies():
    images, labels = source()
    wm = make("unrelated")
    x_emb, _ = wm.embedding_set(images, labels, 50, torch.Generator().manual_seed(0))
    x_ver, _ = wm.verification_set(images, labels, torch.Generator().manual_seed(1))
    assert not any((x_emb == v).flatten(1).all(1).any() for v in x_ver)


def test_unknown_scheme_option_names_valid_ones():
    with pytest.raises(ValueError, match="unknown option.*'txt'.*valid: text"):
        make("content", txt="HI")


def test_content_mark_that_does_not_fit_fails_clearly():
    with pytest.raises(ValueError, match="does not fit 28x28"):
        make("content", text="TOOLONGTEXT")


def test_target_outside_classes_fails_clearly():
    with pytest.raises(ValueError, match="watermark.target 12 is not a class"):
        build_watermark("square", target=12, image_shape=(1, 28, 28), num_classes=10, seed=0)
