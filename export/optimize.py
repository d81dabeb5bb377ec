"""Pruning, clustering and quantization-aware training with tensorflow-model-optimization."""

from kseg.errors import ConfigError


def parse_prune(prune):
    """``prune`` as given (``0.75``, ``"0.75"`` or ``"2:4"``) -> a float sparsity in (0, 1) or ``"2:4"``."""
    if prune is None:
        return None
    if isinstance(prune, str) and ":" in prune:
        if prune.strip() != "2:4":
            raise ConfigError(f"--prune {prune!r}: the structured pattern supported is 2:4 (tfmot's M:N pruning)")
        return "2:4"
    try:
        sparsity = float(prune)
    except ValueError:
        raise ConfigError(f"--prune {prune!r}: give a sparsity in (0, 1), e.g. 0.75, or 2:4") from None
    if not 0.0 < sparsity < 1.0:
        raise ConfigError(f"--prune {sparsity}: the sparsity must be in (0, 1) (the fraction of weights set to zero)")
    return sparsity


def check_options(prune, cluster, qat, mode):
    """Validate the optimization options before any work is done; raises ``ConfigError``."""
    parse_prune(prune)
    if cluster is not None and (not isinstance(cluster, int) or cluster < 2):
        raise ConfigError(f"--cluster {cluster!r}: the number of clusters must be an integer >= 2")
    if qat and mode not in ("int8", "edgetpu"):
        raise ConfigError(f"--qat trains for int8 inference; use it with --to int8 or edgetpu, not {mode}")
