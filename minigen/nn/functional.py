"""The neural-network operations under PyTorch's names: `import minigen.nn.functional as F`."""
from ..ops.conv import avg_pool2d, conv2d, conv_transpose2d, max_pool2d, upsample_nearest2d  # noqa: F401
from ..ops.elementwise import (elu, gelu, hardtanh, leaky_relu, logsigmoid, relu, relu6, sigmoid, silu,  # noqa: F401
                               softplus, tanh)
from ..ops.losses import (binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy,  # noqa: F401
                          gaussian_nll_loss, kl_normal, mse_loss)
from ..ops.nn import dropout, linear, log_softmax, softmax  # noqa: F401
from ..ops.shape import one_hot, pad  # noqa: F401
