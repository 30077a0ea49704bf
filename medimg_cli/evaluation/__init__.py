"""``medimg eval``'s analyses of one split: metrics with bootstrap CIs, calibration,
uncertainty, subgroups, masks and explanation maps, each module one concern.

- ``classification``: per-class and macro metrics, vectorised over bootstrap resamples; ROC.
- ``segmentation``: per-case, per-class Dice, IoU, HD95 and ASD in mm (MONAI).
- ``calibration``: ECE, Brier score, reliability bins, temperature scaling.
- ``uncertainty``: predictions with MC dropout or test-time flips, entropy, risk-coverage.
- ``explain``: Grad-CAM(++), saliency, integrated gradients, attention rollout; ``explained``:
  the cases shown, overlays, pointing game and the model-randomisation check.
- ``figures``: the PNGs. ``run``: ties them together into the eval folder.
"""
