"""One-off investigations behind the library's CPU choices, kept runnable (`python -m benchmarks.investigations.X`):
narrow_widths (why 50/52-wide branches are computed at 64 and why CPU buckets are small) and fsrcnn_deconv (why
FSRCNN's transposed conv is computed in the sub-pixel form)."""
