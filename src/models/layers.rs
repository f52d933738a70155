//! Layer constructors with the initialisation PyTorch recipes use. tch's defaults differ in two
//! ways that matter: `batch_norm2d` starts its scale uniformly in [0, 1] (PyTorch starts it at 1),
//! and `linear` uses a Kaiming bound √(6/fan_in) (PyTorch uses 1/√fan_in).
use tch::nn::{self, init::FanInOut, init::NonLinearity, init::NormalOrUniform, Init};

/// Kaiming-normal with fan-out for convolutions followed by ReLU (the CIFAR ResNet recipe).
pub(crate) const CONV_INIT: Init =
    Init::Kaiming { dist: NormalOrUniform::Normal, fan: FanInOut::FanOut, non_linearity: NonLinearity::ReLU };

/// A 2-D convolution; `bias` only where no BatchNorm follows (or where the reference has one).
pub(crate) fn conv2d(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64, bias: bool) -> nn::Conv2D {
    let cfg =
        nn::ConvConfig { stride, padding, bias, ws_init: CONV_INIT, bs_init: Init::Const(0.0), ..Default::default() };
    nn::conv2d(p, cin, cout, k, cfg)
}

/// A depthwise (grouped) convolution.
pub(crate) fn conv2d_grouped(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, groups: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig { stride, padding: k / 2, groups, bias: false, ws_init: CONV_INIT, ..Default::default() };
    nn::conv2d(p, cin, cout, k, cfg)
}

/// BatchNorm with scale 1 and shift 0, as in PyTorch.
pub(crate) fn bn2d(p: nn::Path, c: i64) -> nn::BatchNorm {
    let cfg = nn::BatchNormConfig { ws_init: Init::Const(1.0), bs_init: Init::Const(0.0), ..Default::default() };
    nn::batch_norm2d(p, c, cfg)
}

/// A fully connected layer initialised as `torch.nn.Linear` is: U(−1/√fan_in, 1/√fan_in).
pub fn linear(p: nn::Path, cin: i64, cout: i64) -> nn::Linear {
    let bound = 1.0 / (cin as f64).sqrt();
    let cfg = nn::LinearConfig {
        ws_init: Init::Uniform { lo: -bound, up: bound },
        bs_init: Some(Init::Uniform { lo: -bound, up: bound }),
        bias: true,
    };
    nn::linear(p, cin, cout, cfg)
}
