"""Command-line programs. Each module defines absl flags and a `main(argv)`; `nst_jax.commands.main` dispatches."""
