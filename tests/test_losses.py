"""Cross-entropy sums and the accuracy count, against plain numpy references."""

import jax.numpy as jnp
import numpy as np

from llm import losses


def test_masked_cross_entropy_and_accuracy_match_numpy_with_ties():
    rng = np.random.default_rng(0)
    logits_BTV = rng.normal(size=(3, 40, 50)).astype(np.float32)
    targets_BT = rng.integers(0, 50, (3, 40))
    # Row 0: every position's maximum is tied between entries 3 and 7; argmax picks 3, so
    # target 3 counts as correct and target 7 does not.
    logits_BTV[0, :, 7] = logits_BTV[0].max(-1) + 1.0
    logits_BTV[0, :, 3] = logits_BTV[0, :, 7]
    targets_BT[0, ::2], targets_BT[0, 1::2] = 3, 7
    targets_BT[1, :10] = logits_BTV[1, :10].argmax(-1)  # some plain hits
    mask_BT = (rng.random((3, 40)) < 0.8).astype(np.float32)

    loss_sum, stats = losses.masked_cross_entropy(
        jnp.asarray(logits_BTV), jnp.asarray(targets_BT), jnp.asarray(mask_BT))

    shifted = logits_BTV - logits_BTV.max(-1, keepdims=True)
    logp_BTV = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll_BT = -np.take_along_axis(logp_BTV, targets_BT[..., None], -1)[..., 0]
    correct_BT = logits_BTV.argmax(-1) == targets_BT  # numpy: first maximum, as jnp.argmax
    np.testing.assert_allclose(loss_sum, (nll_BT * mask_BT).sum(), rtol=1e-5)
    np.testing.assert_allclose(stats["nll"], (nll_BT * mask_BT).sum(), rtol=1e-5)
    assert float(stats["accuracy"]) == float((correct_BT * mask_BT).sum())
    assert float(stats["weight"]) == float(mask_BT.sum())
    assert correct_BT[0, ::2].all() and not correct_BT[0, 1::2].any()
