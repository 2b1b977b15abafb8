"""Training curves as a PNG."""
import math


def plot_history(history, path, title="training"):
    """Plots every metric of `history` (`{name: [values per epoch]}`).

    Metrics and their `val_` counterparts share a panel. Returns `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = sorted(k for k in history if not k.startswith("val_")
                   and k not in ("epoch", "learning_rate"))
    if not names:
        raise ValueError(f"No metrics to plot; received keys {sorted(history)}.")
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows),
                             squeeze=False)
    for ax, name in zip(axes.flat, names):
        values = history[name]
        ax.plot(range(1, len(values) + 1), values, marker="o", ms=3,
                label="train")
        if f"val_{name}" in history:
            val = history[f"val_{name}"]
            ax.plot(range(1, len(val) + 1), val, marker="s", ms=3,
                    label="validation")
            ax.legend(fontsize=8)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    from keras_interbert.utils.atomic import save_figure_atomically

    save_figure_atomically(fig, path, dpi=110)
    plt.close(fig)
    return path
