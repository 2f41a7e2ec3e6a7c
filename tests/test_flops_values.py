"""The paper's FLOPs figure of a routed image by value (models/flops.py paper_flops_figure)."""

from classsr_jax.models.flops import ModelFlops, paper_flops_figure

FLOPS = ModelFlops(branches=(100.0, 200.0, 400.0), classifier=7.0, convention="paper", tile=32)


def test_the_figure_is_the_mean_branch_flops_plus_the_class_module_for_fsrcnn_only():
    assert paper_flops_figure([1, 2, 1], FLOPS, "fsrcnn") == (100 + 2 * 200 + 400) / 4 + 7  # 232
    assert paper_flops_figure([1, 2, 1], FLOPS, "carn") == (100 + 2 * 200 + 400) / 4  # 225: no Class-Module


def test_an_empty_class_counts_nothing_and_no_tiles_cost_nothing():
    assert paper_flops_figure([0, 0, 3], FLOPS, "fsrcnn") == 407.0  # the original would count 1 phantom tile per class
    assert paper_flops_figure([0, 0, 0], FLOPS, "fsrcnn") == 0.0
