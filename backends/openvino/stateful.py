"""Decoders on OpenVINO's fast path: the key/value cache as the model's own state.

The artifact's IR is stateless (the cache in and out as tensors, like every backend's). At
load, each past input becomes a ReadValue of a variable (initialised to an empty past of the
batch's size) and each present output an Assign to it, as OpenVINO's make-stateful
transformation does; the infer request then keeps the cache between steps without copying
it in or out. Stateless runs (golden replay, references) set the variables from the given
past and read the presents back from them, so the session answers `run` exactly as the
stateless graph would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from modelkiln.generation import empty_cache, step_feeds
from modelkiln.manifest import DecoderSection
from modelkiln.tensors import TensorSpec


def make_stateful(ov: Any, model: Any, decoder: DecoderSection) -> Any:
    """`model` (read from the artifact's IR) with its cache moved into variables, in place."""
    from openvino import opset13 as ops
    from openvino.op.util import Variable, VariableInfo

    params = {p.get_friendly_name(): p for p in model.get_parameters()}
    results = {r.input(0).get_source_output().get_any_name(): r for r in model.get_results()}
    batch = ops.gather(ops.shape_of(params["input_ids"]), ops.constant([0]), ops.constant(0))
    sinks = []
    for layer in decoder.layers:
        for past, present in (
            (layer.past_key, layer.present_key),
            (layer.past_value, layer.present_value),
        ):
            param = params[past]
            shape = param.get_partial_shape()
            info = VariableInfo()
            info.data_shape = shape
            info.data_type = param.get_element_type()
            info.variable_id = past
            variable = Variable(info)
            empty = ops.concat(
                [batch, ops.constant([shape[1].get_length(), 0, shape[3].get_length()])], 0
            )
            zero = ops.constant(np.zeros((), dtype=np.float32)).output(0)
            read = ops.read_value(ops.broadcast(zero, empty), variable)
            for target in list(param.output(0).get_target_inputs()):
                target.replace_source_output(read.output(0))
            result = results[present]
            source = result.input(0).get_source_output()
            node = source.get_node() if source.get_node().get_output_size() == 1 else source
            sinks.append(ops.assign(node, variable))
            model.remove_result(result)
            model.remove_parameter(param)
    model.add_sinks(sinks)
    model.validate_nodes_and_infer_types()
    return model


class StatefulDecoder:
    """One infer request of a stateful decoder: `run` answers like the stateless graph;
    `prefill`/`next` step a generation with the cache left in the request."""

    def __init__(
        self,
        ov: Any,
        compiled: Any,
        decoder: DecoderSection,
        inputs: Mapping[str, TensorSpec],
        check: Callable[[Mapping[str, Any]], dict[str, np.ndarray]],
        fail: Callable[[BaseException, Mapping[str, np.ndarray]], Exception],
    ) -> None:
        self._ov = ov
        self._request = compiled.create_infer_request()
        self.decoder = decoder
        self.inputs = inputs
        self._check = check  # the session's feed checks, for the prompt
        self._fail = fail  # the session's one-line error for a failed inference

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._request.reset_state()
        past = [feeds[layer.past_key] for layer in self.decoder.layers]
        if past and past[0].shape[2] > 0:  # an empty past is the variables' initial value
            states = {s.name: s for s in self._request.query_state()}
            for layer in self.decoder.layers:
                for name in (layer.past_key, layer.past_value):
                    states[name].state = self._ov.Tensor(np.ascontiguousarray(feeds[name]))
        tokens = {n: v for n, v in feeds.items() if not n.startswith("past_key_values.")}
        self._request.infer(tokens)
        outputs = {"logits": np.array(self._request.get_tensor("logits").data, copy=True)}
        states = {s.name: s for s in self._request.query_state()}
        for layer in self.decoder.layers:
            outputs[layer.present_key] = np.array(states[layer.past_key].state.data, copy=True)
            outputs[layer.present_value] = np.array(states[layer.past_value].state.data, copy=True)
        return outputs

    def prefill(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> np.ndarray:
        feeds = step_feeds(self.inputs, ids, mask, pos)
        self._check({**feeds, **empty_cache(self.inputs, self.decoder, len(ids))})
        self._request.reset_state()
        return self.next(ids, mask, pos)

    def next(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> np.ndarray:
        feeds = step_feeds(self.inputs, ids, mask, pos)
        try:
            self._request.infer(feeds)
        except Exception as exc:  # OpenVINO raises its own exception types
            raise self._fail(exc, feeds) from None
        return np.array(self._request.get_tensor("logits").data[:, -1], copy=True)
