"""The neural-network operations under PyTorch's names: `import minigen.nn.functional as F`.

Every name here that torch.nn.functional also has takes PyTorch's positional arguments with PyTorch's
meaning (`pad` pairs from the last axis, losses with `weight` third), except that an axis is called `axis`
throughout minigen (`F.softmax(x, 1)` as in PyTorch, `F.softmax(x, axis=1)` for its `dim=1`). The rest
(`upsample_nearest2d`, `kl_normal`) are minigen's own names that say what they do.
"""
from ..ops.conv import (adaptive_avg_pool2d, avg_pool2d, conv1d, conv2d, conv_transpose2d,  # noqa: F401
                       max_pool2d, upsample_nearest2d)
from ..ops.elementwise import (elu, gelu, hardtanh, leaky_relu, logsigmoid, relu, relu6, sigmoid, silu,  # noqa: F401
                               softplus, tanh)
from ..ops.losses import (binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy,  # noqa: F401
                          gaussian_nll_loss, kl_div, kl_normal, l1_loss, mse_loss, nll_loss, smooth_l1_loss)
from ..ops.nn import (batch_norm, dropout, embedding, gated_tanh, group_norm, gru_cell_update, gru_layer,  # noqa: F401
                      interpolate, layer_norm, linear, log_softmax, lstm_cell_update, lstm_layer, pad,
                      pixel_shuffle, pixel_unshuffle, scaled_dot_product_attention, softmax)
from ..ops.shape import one_hot  # noqa: F401
