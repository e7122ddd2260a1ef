"""Training on the analytic gradients: optimizers, the compiled step and epoch, `fit`, evaluation,
DP-SGD (`privacy`) and data-parallel sharding over devices and hosts (`distributed`)."""
