"""Training on the analytic gradients: optimizers, the compiled step and epoch, `fit`, evaluation,
DP-SGD (`privacy`), data-parallel sharding over devices and hosts (`distributed`) and the
multi-process start-up (`multihost`)."""
