"""``python -m proxgen_jax.train`` — see :mod:`proxgen_jax.train.cli`."""

from __future__ import annotations

from proxgen_jax.train.cli import main

if __name__ == "__main__":
    main()
