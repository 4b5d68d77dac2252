"""Grammar-constrained sampling for llama-cpp-python that checks the grammar after sampling.

llama-cpp-python puts the grammar sampler inside its chain, so every generated token runs the
grammar over the whole vocabulary (49,152 candidates for SmolLM2) before top-k even starts. That
is most of the time a tiny model spends per token. llama.cpp's own samplers (``common/sampling.cpp``,
``grammar_first = false``) instead sample with the ordinary chain first and ask the grammar about
the one chosen token; only when the grammar refuses it do they apply the grammar to every candidate
and sample again. Because a refused token is simply resampled from the grammar-masked distribution,
the resulting distribution over valid tokens is the same as masking first: P(t) / P(valid).

:class:`LazyGrammarLlama` is ``llama_cpp.Llama`` with that sampling order; nothing else changes.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import Llama

# Same layout as llama_cpp.llama_token_data: (int32 id, float logit, float p).
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
if _TOKEN_DATA.itemsize != ctypes.sizeof(llama_cpp.llama_token_data):  # a future binding's layout
    raise ImportError("llama_cpp.llama_token_data changed layout; lazy_grammar needs updating")


class LazyGrammarSampler:
    """The ordinary chain (penalties, top-k/p, temperature, the draw) plus a grammar consulted after it.

    Stands in for llama-cpp-python's ``LlamaSampler`` where ``Llama.sample`` uses it: ``sample``
    returns a token and has accepted it into the chain and the grammar, as ``llama_sampler_sample``
    does.
    """

    def __init__(self, chain: Any, llm: Llama, grammar: Any):
        self.chain = chain
        self.grammar = llama_cpp.llama_sampler_init_grammar(
            llm._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not self.grammar:
            raise ValueError("llama.cpp could not build a sampler from the grammar")
        self.n_vocab = llm.n_vocab()
        self._ids = np.arange(self.n_vocab, dtype=np.int32)
        self._data = np.empty(self.n_vocab, dtype=_TOKEN_DATA)
        self._single = llama_cpp.llama_token_data()
        self.resampled = 0  # tokens the grammar refused: a measure, read by tests

    def _candidates(self, ctx: Any, idx: int) -> llama_cpp.llama_token_data_array:
        logits = llama_cpp.llama_get_logits_ith(ctx.ctx, idx)
        self._data["id"] = self._ids  # samplers sort and truncate in place: reset every time
        self._data["logit"] = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        self._data["p"] = 0.0
        return llama_cpp.llama_token_data_array(
            data=self._data.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=self.n_vocab,
            selected=-1,
            sorted=False,
        )

    def _draw(self, candidates: llama_cpp.llama_token_data_array) -> int:
        llama_cpp.llama_sampler_apply(self.chain.sampler, ctypes.byref(candidates))
        if candidates.selected < 0:
            raise RuntimeError("the sampler chain selected no token")
        return int(candidates.data[candidates.selected].id)

    def _allowed(self, token: int) -> bool:
        self._single.id, self._single.logit, self._single.p = token, 1.0, 0.0  # type: ignore[assignment]
        one = llama_cpp.llama_token_data_array(
            data=ctypes.pointer(self._single), size=1, selected=-1, sorted=False
        )
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(one))
        return not math.isinf(self._single.logit)

    def sample(self, ctx: Any, idx: int = -1) -> int:
        token = self._draw(self._candidates(ctx, idx))
        if not self._allowed(token):
            self.resampled += 1
            candidates = self._candidates(ctx, idx)
            llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(candidates))
            token = self._draw(candidates)
        llama_cpp.llama_sampler_accept(self.grammar, token)
        self.chain.accept(token)
        return token

    def accept(self, token: int) -> None:
        llama_cpp.llama_sampler_accept(self.grammar, token)
        self.chain.accept(token)

    def reset(self) -> None:
        llama_cpp.llama_sampler_reset(self.grammar)
        self.chain.reset()

    def close(self) -> None:
        if self.grammar:
            llama_cpp.llama_sampler_free(self.grammar)
            self.grammar = None
        self.chain.close()

    def __del__(self) -> None:
        self.close()


class LazyGrammarLlama(Llama):
    """``llama_cpp.Llama`` whose grammar-constrained generation checks the grammar after sampling."""

    last_sampler: LazyGrammarSampler | None = None

    def _init_sampler(self, *args: Any, **kwargs: Any) -> Any:
        grammar = kwargs.pop("grammar", None)  # llama-cpp-python passes its options by keyword
        chain = super()._init_sampler(*args, **kwargs)
        if grammar is None:
            return chain
        self.last_sampler = LazyGrammarSampler(chain, self, grammar)
        return self.last_sampler
