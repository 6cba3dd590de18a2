"""The README's figures show what their captions say (issue 26, item 9), drawn from the
committed results: each figure is captured before it is saved and its parts inspected."""
import pytest

import ex1_cnn
import ex1_mlp
import ex2_fcn


@pytest.fixture
def drawn(monkeypatch, tmp_path):
    """{file name: figure} of what a command draws (saved nowhere)."""
    import matplotlib
    matplotlib.use("Agg")
    figures = {}

    def capture(fig, caption, path, *args, **kwargs):
        fig.canvas.draw()  # lay it out as saving would
        figures[path.rsplit("/", 1)[-1]] = fig

    for module in (ex1_cnn, ex1_mlp, ex2_fcn):
        monkeypatch.setattr(module, "save_figure", capture)
    yield figures
    import matplotlib.pyplot as plt
    plt.close("all")


def test_the_cnn_curves_legend_tells_plain_from_residual_and_hides_no_curve(drawn, tmp_path):
    ex1_cnn.main(ex1_cnn.get_args(["--sweep", "--cpu", "--plot-only", "--fig-dir", str(tmp_path)]))
    fig = drawn["ex1_cnn_curves.png"]
    legend = fig.axes[1].get_legend()
    styles = {text.get_text(): line.get_linestyle()
              for text, line in zip(legend.get_texts(), legend.get_lines())}
    assert styles["plain-56"] == "--" and styles["residual-56"] == "-"
    box, panel = (a.get_window_extent() for a in (legend, fig.axes[1]))
    assert box.x0 >= panel.x1  # beside the panel, over none of its curves


def test_the_mlp_figures_show_overlapping_depths_and_say_where_a_gradient_is_zero(drawn, tmp_path):
    ex1_mlp.main(ex1_mlp.get_args(["--sweep", "--plot-only", "--fig-dir", str(tmp_path)]))
    plain = drawn["ex1_mlp_curves.png"].axes[0]  # both plain 32 and 64 sit at chance
    widths = {line.get_label(): line.get_linewidth() for line in plain.get_lines()}
    assert widths["depth 64"] > widths["depth 32"]
    at_init = drawn["ex1_mlp_gradients.png"].axes[0]  # depth 32: ReZero's gated layers get exactly 0
    notes = " ".join(t.get_text() for t in at_init.texts)
    assert "exactly 0" in notes and "ReZero: 32 of 34" in notes


def test_the_detectors_score_maps_have_a_colour_scale(drawn, tmp_path):
    ex2_fcn.main(ex2_fcn.get_args(["--plot-only", "--fig-dir", str(tmp_path)]))
    labels = [ax.get_xlabel() for ax in drawn["ex2_fcn_detections.png"].axes]
    assert any(label.startswith("score, probability") for label in labels)
