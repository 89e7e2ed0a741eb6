""":class:`ShrinkInfo`: what :func:`keras_sparse.shrink` did to a model."""

__all__ = ["ShrinkInfo"]


class ShrinkInfo:
    """What :func:`shrink` did.

    Attributes:
        layers: one dict per layer of the input model with ``name``,
            ``type``, ``units_before``, ``units_after`` (units, filters,
            channels or heads; ``None`` for layers without units) and
            ``status``: ``"shrunk"``, ``"removed"``, ``"removed
            (identity)"`` (a merge left with one input), ``"unchanged"`` or
            ``"kept whole"`` (a layer the rules cannot shrink: all its
            channels are kept).
        dropped_inputs: ``{input name: [feature indices]}`` removed from the
            model inputs (feed ``x[..., kept_inputs[name]]`` to the new model).
        kept_inputs: ``{input name: [feature indices]}`` the new inputs hold.
        offset_layers: names of the ``Rescaling`` layers added to put back
            the constant output of a removed residual branch.
        carriers: number of constant channels kept as carriers in front of
            ``same``-padded convolutions.
        params_before, params_after: parameter counts.
        not_shrunk: names of pruned layers left as they were (subclassed
            models: layers outside Sequential/functional sub-models).
        blocked: ``{layer name: count}`` of pruned units (all-zero weights)
            that had to be kept: a consumer needs the channel (a layer the
            rules cannot shrink, the other input of a residual ``Add``, a
            model output). Carriers are not counted.
        max_abs_diff: largest output difference measured by the check.
    """

    def __init__(self):
        self.layers = []
        self.dropped_inputs = {}
        self.kept_inputs = {}
        self.offset_layers = []
        self.carriers = 0
        self.params_before = 0
        self.params_after = 0
        self.not_shrunk = []
        self.blocked = {}
        self.max_abs_diff = None

    def to_dict(self):
        return dict(vars(self))

    def __str__(self):
        lines = [f"{'layer':<28}{'type':<24}{'units':>14}  status"]
        for row in self.layers:
            units = ""
            if row["units_before"] is not None:
                units = f"{row['units_before']} -> {row['units_after']}"
            lines.append(f"{row['name']:<28}{row['type']:<24}{units:>14}  {row['status']}")
        lines.append(f"parameters: {self.params_before:,} -> {self.params_after:,}")
        if self.dropped_inputs:
            lines.append(f"dropped input features: {self.dropped_inputs}")
        if self.offset_layers:
            lines.append(f"offset layers added: {self.offset_layers}")
        if self.not_shrunk:
            lines.append(f"pruned layers left as they were: {self.not_shrunk}")
        if self.blocked:
            lines.append(f"pruned units kept because a consumer needs them: {self.blocked}")
        return "\n".join(lines)

    __repr__ = __str__
