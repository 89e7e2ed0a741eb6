"""What optimizers that wrap others (CaseOptimizer, Proximal) share."""

import keras


def apply_variables(optimizer, grads, trainable_variables):
    """The variables an ``apply(grads, trainable_variables)`` call updates,
    building ``optimizer`` on them at the first call, as Keras' own
    ``apply`` does; ``None`` means the variables it was built with."""
    if trainable_variables is None:
        if not optimizer.built:
            raise ValueError(
                "When passing `grads` without `variables`, the optimizer "
                "must already be built on a list of variables. Call "
                "`optimizer.build(trainable_variables)` first."
            )
        return optimizer._trainable_variables
    trainable_variables = list(trainable_variables)
    if not optimizer.built:
        with keras.name_scope(optimizer.name, caller=optimizer):
            optimizer.build(trainable_variables)
        optimizer.built = True
    return trainable_variables
