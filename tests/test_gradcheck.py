"""Test the tester: gradients planted wrong must make the checks fail, right ones must pass."""
import numpy as np
import pytest

import minigen as mg


class Cube(mg.Function):
    """y = x^3 with a backward off by `factor`, optionally written so that it is right only to first order."""

    def __init__(self, factor=1.0, detached=False):
        self.factor, self.detached = factor, detached

    def forward(self, x):
        return x ** 3

    def backward(self, g):
        x = self.inputs[0]
        if self.detached:     # a constant: right value, but its own derivative (6x) is lost
            return g * mg.Tensor(3 * self.factor * x.data ** 2)
        return g * (3 * self.factor) * Square()(x)


class Square(mg.Function):
    """y = x^2 whose backward is wrong by 1.001: only second derivatives of Cube see it."""

    factor = 1.0

    def forward(self, x):
        return x ** 2

    def backward(self, g):
        return g * (2 * self.factor) * self.inputs[0]


def x64():
    return mg.tensor(np.array([[0.7, -1.3, 2.1], [0.4, 1.1, -0.6]]), requires_grad=True)


@pytest.mark.parametrize("mode", ["directional", "full"])
def test_right_gradients_pass(mode):
    assert mg.gradcheck(Cube(), [x64()], mode=mode)
    assert mg.gradgradcheck(Cube(), [x64()], mode=mode)


@pytest.mark.parametrize("mode", ["directional", "full"])
def test_first_order_error_of_one_part_in_a_thousand_is_caught(mode):
    # Central differences in float64 are accurate to ~1e-9 here, so rtol=1e-4 separates a 1.001 error from
    # noise; the default rtol=1e-3 (PyTorch's) is meant for ops with rougher numerics and sits on the edge.
    with pytest.raises(mg.GradcheckError):
        mg.gradcheck(Cube(factor=1.001), [x64()], rtol=1e-4, mode=mode)
    assert not mg.gradcheck(Cube(factor=1.01), [x64()], mode=mode, raise_exception=False)


def test_second_order_errors_are_caught_while_first_order_passes(monkeypatch):
    assert mg.gradcheck(Cube(detached=True), [x64()])
    with pytest.raises(mg.GradcheckError):
        mg.gradgradcheck(Cube(detached=True), [x64()])
    monkeypatch.setattr(Square, "factor", 1.001)
    assert mg.gradcheck(Cube(), [x64()], rtol=1e-4)       # first order uses Square's forward only
    with pytest.raises(mg.GradcheckError):
        mg.gradgradcheck(Cube(), [x64()], rtol=1e-4)


def test_full_mode_names_the_worst_element():
    class WrongAtOne(mg.Function):
        def forward(self, x):
            return x * 2

        def backward(self, g):
            mask = np.ones(self.inputs[0].shape)
            mask[1, 2] = 1.5
            return g * mg.Tensor(2 * mask)

    with pytest.raises(mg.GradcheckError, match=r"d output0\[1, 2\] / d input0\[1, 2\] is 3\.0 analytically but "
                                                 r"2\.0\d* by finite differences \(1 of 36"):
        mg.gradcheck(WrongAtOne(), [x64()], mode="full")


def test_a_backward_that_forgets_an_input_is_caught():
    class MulForgetsB(mg.Function):
        def forward(self, a, b):
            return a * b

        def backward(self, g):
            return g * self.inputs[1], None

    with pytest.raises(mg.GradcheckError):
        mg.gradcheck(lambda a, b: MulForgetsB()(a, b), [x64(), x64()])


def test_checks_refuse_float32_and_catch_input_mutation():
    with pytest.raises(TypeError, match="float64"):
        mg.gradcheck(mg.tanh, [mg.tensor([1.0], requires_grad=True)])

    def mutating(x):
        x.data[0, 0] += 1.0
        return x * 1.0
    with pytest.raises(mg.GradcheckError, match="modified one of its inputs"):
        mg.gradcheck(mutating, [x64()])


class Tiny(mg.Function):
    """y = 1e-4 x^3 whose first (factor1) or second (factor2) derivative is planted wrong: an input whose
    effect is small beside another's."""

    def __init__(self, factor1=1.0, factor2=1.0):
        self.factor1, self.factor2 = factor1, factor2

    def forward(self, x):
        return 1e-4 * x ** 3

    def backward(self, g):
        square = Square()
        square.factor = self.factor2
        return g * (3e-4 * self.factor1) * square(self.inputs[0])


def test_a_wrong_gradient_of_a_small_input_is_not_hidden_by_a_large_one():
    """Each input is checked on its own, at its own scale: summed over inputs, W's large, right term
    would hide s's wrong one (as it did: gradcheck(f, [W, s]) passed while the check of s alone failed)."""
    W, s = x64(), mg.tensor(np.array([0.9, -1.2, 0.4]), requires_grad=True)

    def f(factor1, factor2):
        return lambda W, s: (W ** 3).sum() * 10 + Tiny(factor1, factor2)(s).sum()

    assert mg.gradcheck(f(1, 1), [W, s]) and mg.gradgradcheck(f(1, 1), [W, s])
    assert not mg.gradcheck(lambda s: f(2, 1)(W, s), [s], raise_exception=False)
    with pytest.raises(mg.GradcheckError, match="input 1"):
        mg.gradcheck(f(2, 1), [W, s])
    assert mg.gradcheck(f(1, 2), [W, s])                   # the planted error is in the second derivative
    with pytest.raises(mg.GradcheckError, match="input 1"):
        mg.gradgradcheck(f(1, 2), [W, s])
