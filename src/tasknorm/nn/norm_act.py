"""A normalization layer followed by dropout and an activation, as in timm's ``BatchNormAct2d``."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class NormAct(nn.Module):
    """``act(drop(norm(x)))``: the container that :func:`tasknorm.nn.convert` puts in place of a
    timm ``BatchNormAct2d`` (or another norm layer carrying ``drop`` and ``act``) so that its
    activation survives conversion.

    ``plain_class`` is the class it replaced; :meth:`plain_module` builds it back around an
    ordinary norm layer, which is how :func:`tasknorm.nn.extract_task` returns timm's own layers.
    """

    def __init__(self, norm: nn.Module, drop: nn.Module | None = None,
                 act: nn.Module | None = None, plain_class: type[nn.Module] | None = None) -> None:
        super().__init__()
        self.norm = norm
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()
        self.plain_class = plain_class

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(self.norm(x)))

    def plain_module(self, norm: nn.Module) -> nn.Module:
        """``plain_class`` holding the parameters and buffers of ``norm`` (an ``nn.BatchNorm`` or
        ``nn.LayerNorm`` of the same shape) and this container's ``drop`` and ``act``; a
        :class:`NormAct` around ``norm`` when there is no ``plain_class``.

        ``plain_class`` is built as timm builds its norm-act layers (``BatchNormAct2d``,
        ``LayerNormAct2d``, ...): BatchNorm arguments for BatchNorm subclasses, ``affine`` for
        the LayerNorm ones.
        """
        if self.plain_class is None:
            return NormAct(norm, self.drop, self.act)
        if isinstance(norm, _BatchNorm):
            plain = self.plain_class(norm.num_features, eps=norm.eps, momentum=norm.momentum,
                                     affine=norm.affine,
                                     track_running_stats=norm.track_running_stats)
        else:
            shape = norm.normalized_shape
            plain = self.plain_class(shape[0] if len(shape) == 1 else shape, eps=norm.eps,
                                     affine=norm.weight is not None, bias=norm.bias is not None)
        for name, tensor in [*norm.named_parameters(recurse=False),
                             *norm.named_buffers(recurse=False)]:
            setattr(plain, name, tensor)
        plain.drop = self.drop
        plain.act = self.act
        plain.training = norm.training  # not .train(): drop and act keep their own modes
        return plain

    def extra_repr(self) -> str:
        return "" if self.plain_class is None else f"plain_class={self.plain_class.__name__}"
