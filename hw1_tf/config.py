"""Config field helper (interim: the lead's hw1_tf.config replaces this file)."""

import dataclasses


def option(default, help, **kw):
    return dataclasses.field(default=default, metadata={"help": help, **kw})
