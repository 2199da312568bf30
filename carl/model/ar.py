"""ContinuousAR: tokenizer + conditioner + order + backbone + scoring rule.

The model holds its five parts, the training loss and the hidden states each attention kind
gives; the generation loops live in :mod:`carl.model.generation`, the folder format and the Hub
mixin in :mod:`carl.model.folder`.
"""

import dataclasses

import torch
from torch import nn

from carl.config import Component, ModelConfig, SampleConfig, from_dict, to_dict
from carl.model import completion, generation
from carl.model.backbone import Backbone
from carl.model.folder import ModelFolderMixin
from carl.orders.base import Plan, gather_rows
from carl.progress import bar


class ContinuousAR(
    nn.Module,
    ModelFolderMixin,
    library_name="carl",
    tags=["continuous-autoregression"],
):
    """A continuous autoregressive model: tokenizer + conditioner + order + backbone + scoring rule.

    Each part is chosen by its registered name in a :class:`carl.config.ModelConfig` (the
    ``model`` section of a recipe), so a model is rebuilt from ``config.json`` alone.

    Training: ``loss(batch)`` encodes the data (or takes cached ``tokens``), asks the order for a
    plan, runs the backbone over ``[condition tokens ; tokens]`` and scores the hidden states of
    the target positions only. Generation: ``generate(condition, ...)`` follows the order's
    schedule, samples the next tokens from the scoring rule (with classifier-free guidance when
    ``cfg != 1``) and decodes them.

    Saving and loading (``huggingface_hub``'s ``PyTorchModelHubMixin``, extended so that every
    writer produces the same complete model folder, see :mod:`carl.model.folder`):

        model = ContinuousAR.from_pretrained("runs/tiny")      # a folder or a Hub repo id
        samples = model.generate(torch.arange(4), num_steps=8)
        model.save_pretrained("my-model")                     # config, weights, carl.json, card
        model.push_to_hub("me/my-model")                      # the same folder, on the Hub
    """

    def __init__(self, config: ModelConfig | dict):
        """Build the five parts (fresh weights; :meth:`from_pretrained` loads trained ones).

        Args:
            config: the model section of a recipe, e.g. ``load_recipe("tiny").model``, or its
                plain form as read from ``config.json``.

        Raises:
            carl.errors.RecipeError: a part names an unknown component or a wrong option.
        """
        super().__init__()
        if isinstance(config, dict):  # from config.json; the Hub mixin decodes dataclasses only shallowly
            config = from_dict(ModelConfig, config, "config")
        self.tokenizer = config.tokenizer.build("tokenizers")
        self.tokenizer.requires_grad_(False)
        config = _with_resolved_tokenizer(config, self.tokenizer)
        self.config = config
        self._hub_mixin_config = to_dict(config)  # what save_pretrained writes to config.json
        self.order = config.order.build("orders")
        self.conditioner = config.conditioner.build("conditioners", width=config.backbone.width)
        self.backbone = Backbone(
            config.backbone,
            token_dim=self.tokenizer.token_dim,
            buffer=self.conditioner.buffer,
            seq_len=self.tokenizer.num_tokens,
            mask_token=self.order.attention == "bidirectional",
            query_next=self.order.query_next,
        )
        self.score = config.score.build("scores", hidden_dim=config.backbone.width, token_dim=self.tokenizer.token_dim)
        self.sample_config = SampleConfig()  # generate()'s defaults; from_pretrained sets the shipped ones

    # ------------------------------------------------------------------------------------------
    # training

    def no_weight_decay(self) -> set[str]:
        """Parameters without weight decay beyond biases and norms (positions, mask token, ...)."""
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}

    @torch.no_grad()
    def encode(self, batch: dict) -> torch.Tensor:
        """The batch's tokens ``(B, N, D)``: the tokenizer's encoding of ``data``, or its reading
        of token-cache rows (see :meth:`Tokenizer.cache`)."""
        if "data" in batch:
            return self.tokenizer.encode(batch["data"])
        return self.tokenizer.from_cache(batch)

    def loss(self, batch: dict, plan: Plan | None = None) -> torch.Tensor:
        """Mean loss over the target tokens of ``batch`` (``data`` or token-cache rows, optional ``condition``)."""
        tokens = self.encode(batch)
        b, n, _ = tokens.shape
        plan = plan or self.order.plan(b, n, device=tokens.device)
        drop = self.conditioner.sample_drop(b, tokens.device) if self.training else None
        cond = self.conditioner(batch.get("condition"), b, drop)
        hidden, targets = self.hidden_at_targets(tokens, cond, plan)
        return self.score.loss(hidden, targets).mean()

    def forward(self, batch: dict) -> torch.Tensor:
        """The training loss; ``forward`` so that DDP/FSDP wrappers and autocast see the call."""
        return self.loss(batch)

    def hidden_at_targets(self, tokens: torch.Tensor, cond: torch.Tensor, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states ``(T, C)`` at the plan's targets and the target tokens ``(T, D)``."""
        if self.order.attention == "bidirectional":
            if plan.num_known is None:  # rows may know different counts: boolean indexing
                hidden = self.hidden_bidirectional(tokens, cond, plan.known)
                return hidden[plan.targets], tokens[plan.targets]
            hidden = self.hidden_bidirectional(tokens, cond, plan.known, plan.positions(known=True))
            targets = plan.positions(known=False)  # fixed shapes: no host-device sync
            return gather_rows(hidden, targets).flatten(0, 1), gather_rows(tokens, targets).flatten(0, 1)
        ordered = torch.gather(tokens, 1, plan.order[..., None].expand_as(tokens))  # (B, N, D) in generation order
        hidden = self.hidden_causal(ordered, cond, plan.order)
        return hidden.flatten(0, 1), ordered.flatten(0, 1)

    def hidden_bidirectional(self, tokens, cond, known, known_index: torch.Tensor | None = None) -> torch.Tensor:
        """Known tokens and mask tokens attend to each other; returns ``(B, N, C)`` (buffer dropped).
        ``known_index (B, K)``: the known positions in ascending order, when every row knows K."""
        bb = self.backbone
        if bb.config.encoder_depth:
            return self._hidden_encoder_decoder(tokens, cond, known, known_index)
        x = bb.token_proj(tokens.to(bb.pos_embed.dtype))  # (B, N, C); tokens are float32, the model may be bf16
        x = torch.where(known[..., None], x, bb.mask_token)  # where and cat promote under autocast
        x = torch.cat([cond, x], dim=1) + bb.pos_embed  # (B, S + N, C)
        return bb(x, causal=False)[:, bb.buffer :]

    def _hidden_encoder_decoder(self, tokens, cond, known, known_index: torch.Tensor | None = None) -> torch.Tensor:
        """MAR: the encoder runs over the condition and the known tokens only (every row knows as
        many), the decoder over all positions with mask tokens where nothing is known. With
        ``known_index`` the kept rows are gathered and scattered back (fixed shapes, no host sync)."""
        bb = self.backbone
        b, s = tokens.shape[0], bb.buffer
        x = bb.token_proj(tokens.to(bb.pos_embed.dtype))
        x = torch.cat([cond, x], dim=1) + bb.encoder_pos_embed
        if known_index is None:
            keep = torch.cat([known.new_ones(b, s), known], dim=1)  # (B, S + N)
            encoded = bb.decoder_embed(bb.encode(x[keep].view(b, -1, x.shape[-1])))
            y = bb.mask_token.to(encoded.dtype).expand(b, keep.shape[1], -1).clone()  # index_put and scatter_
            y[keep] = encoded.flatten(0, 1)  # need one dtype (the encoder's is bf16 under autocast)
        else:
            buffer = torch.arange(s, device=known_index.device).expand(b, s)
            keep = torch.cat([buffer, known_index + s], dim=1)  # (B, S + K), ascending like the mask
            encoded = bb.decoder_embed(bb.encode(gather_rows(x, keep)))
            y = bb.mask_token.to(encoded.dtype).expand(b, x.shape[1], -1).clone()
            y.scatter_(1, keep[..., None].expand_as(encoded), encoded)
        return bb(y + bb.pos_embed, causal=False)[:, s:] + bb.head_pos_embed

    def causal_inputs(self, ordered: torch.Tensor, positions: torch.Tensor, next_positions: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``(B, L, C)`` at their positions, plus (random orders) the query of the
        position each input predicts next."""
        bb = self.backbone
        x = bb.token_proj(ordered.to(bb.pos_embed.dtype)) + bb.pos_embed[0, bb.buffer :][positions]
        if bb.query_embed is not None:
            x = x + bb.query_embed[0][next_positions]
        return x

    def causal_prefix(self, cond: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """Condition tokens with their positions; the last one also queries the first position to generate."""
        bb = self.backbone
        prefix = cond + bb.pos_embed[:, : bb.buffer]
        if bb.query_embed is not None:
            prefix = torch.cat([prefix[:, :-1], prefix[:, -1:] + bb.query_embed[0][first][:, None]], dim=1)
        return prefix

    def hidden_causal(self, ordered: torch.Tensor, cond: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: ``hidden[:, i]`` sees the condition and ``ordered[:, :i]``; returns ``(B, N, C)``."""
        bb = self.backbone
        inputs = self.causal_inputs(ordered[:, :-1], order[:, :-1], order[:, 1:])
        x = torch.cat([self.causal_prefix(cond, order[:, 0]), inputs], dim=1)
        return bb(x, causal=True)[:, bb.buffer - 1 :]

    # ------------------------------------------------------------------------------------------
    # generation

    @torch.no_grad()
    def generate(
        self,
        condition: torch.Tensor | None = None,
        *,
        batch_size: int | None = None,
        num_steps: int | None = None,
        cfg: float | None = None,
        cfg_schedule: str | None = None,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        return_tokens: bool = False,
        prompt: torch.Tensor | None = None,
        static_shapes: bool | None = None,
    ) -> torch.Tensor:
        """Generate a batch with the order's schedule and the scoring rule's sampler (no gradients;
        the model is put in eval mode for the call).

        Args:
            condition: one condition per sample (class labels ``(B,)``), or None for unconditional.
            batch_size: number of samples when ``condition`` is None.
            num_steps: generation steps for masked orders (causal orders always take N steps).
            cfg: classifier-free guidance scale (1: none).
            cfg_schedule: ``linear`` (scale grows with the share of known tokens, as in MAR/EAR) or ``constant``.
            temperature: the scoring rule's sampling temperature.
                Each of these four defaults to :attr:`sample_config`: the settings the model was
                trained and shipped with (its recipe's ``sample`` section, read by
                :meth:`from_pretrained`), or carl's defaults (64 steps, CFG 1, linear, temperature 1).
            generator: seeds the order and the sampling noise.
            progress: show a progress bar over generation steps.
            prompt: tokens ``(B, K, D)`` given for the first K positions (causal order only):
                they are read in one pass and the rest is generated after them (forecasting,
                completion). The result holds them unchanged.
            return_tokens: return the tokens instead of decoding them.
            static_shapes: decode the causal order with a fixed-shape KV cache (every step has
                the same shapes, so a compiled backbone or a CUDA graph captures it once; the
                same samples up to rounding). Default: on CUDA only (on a CPU the growing cache
                is cheaper).

        Returns:
            The decoded samples (the data's shape: images ``(B, C, H, W)``, series ``(B, T, C)``,
            ...), or tokens ``(B, N, D)`` with ``return_tokens``. Conditional models give one
            sample per condition, unconditional ones ``batch_size``.

        Raises:
            ValueError: neither ``condition`` nor ``batch_size``; a prompt with a non-causal order.

        Example:
            ``model.generate(torch.tensor([3, 5]), num_steps=16, cfg=4.0, temperature=0.7)``
        """
        num_steps, cfg, cfg_schedule, temperature = self._sampling(num_steps, cfg, cfg_schedule, temperature)
        if cfg_schedule not in ("linear", "constant"):
            raise ValueError(f"cfg_schedule must be 'linear' or 'constant', got {cfg_schedule!r}")
        if prompt is not None:
            if self.order.attention != "causal" or self.order.query_next:
                raise ValueError("a prompt needs the causal order (the first positions are the given ones)")
            batch_size = len(prompt)
        if condition is None and batch_size is None:
            raise ValueError("give either condition or batch_size")
        device = self.backbone.pos_embed.device
        if condition is not None:
            condition = condition.to(device)
            batch_size = len(condition)
        was_training = self.training
        self.eval()
        try:
            cond = self.conditioner(condition, batch_size)
            if cfg != 1.0:  # conditional rows first, unconditional rows after them
                cond = torch.cat([cond, self.conditioner(None, batch_size)], dim=0)
            n = self.tokenizer.num_tokens
            order = self.order.generation_order(batch_size, n, generator, device)
            schedule = self.order.schedule(n, num_steps)
            if prompt is not None:  # its tokens are given, not generated
                schedule = [known for known in schedule if known > prompt.shape[1]]
            steps = bar(schedule, desc="generating", leave=False, progress=progress)
            sampler = dict(cfg=cfg, cfg_schedule=cfg_schedule, temperature=temperature, generator=generator)
            if self.order.attention == "bidirectional":
                tokens = generation.generate_bidirectional(self, cond, order, steps, **sampler)
            else:
                static = generation.static_by_default(device) if static_shapes is None else static_shapes
                tokens = generation.generate_causal(self, cond, order, steps, prompt=prompt, static=static, **sampler)
        finally:
            self.train(was_training)
        return tokens if return_tokens else self.tokenizer.decode(tokens)

    def _sampling(self, num_steps, cfg, cfg_schedule, temperature) -> tuple:
        """The settings given, the model's shipped ones (:attr:`sample_config`) for those that are not."""
        d = self.sample_config
        return (d.num_steps if num_steps is None else num_steps, d.cfg if cfg is None else cfg,
                d.cfg_schedule if cfg_schedule is None else cfg_schedule, d.temperature if temperature is None else temperature)

    @torch.no_grad()
    def complete(
        self,
        data: torch.Tensor,
        known_mask: torch.Tensor,
        condition: torch.Tensor | None = None,
        *,
        num_steps: int | None = None,
        cfg: float | None = None,
        cfg_schedule: str | None = None,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        return_tokens: bool = False,
        keep_known: bool = True,
    ) -> torch.Tensor:
        """Complete partly known data: the parts not in ``known_mask`` are generated, consistent with
        the known ones (inpainting, outpainting, the rest of a half digit, a gap in a series).

        The data goes through the tokenizer: its tokens are encoded (the posterior mean for a VAE)
        and the data mask is mapped to a token mask by :meth:`Tokenizer.token_mask`: a token is
        known when every value it covers is known, so a token that covers part of the hole is
        generated whole. With ``keep_known`` the known values of ``data`` are put back into the
        decoded result (a tokenizer reconstructs them only approximately).

        Args:
            data: a batch in the tokenizer's data layout (images ``(B, C, H, W)``, series ``(B, T, C)``).
            known_mask: bool, True where ``data`` is known; ``data``'s shape or one that broadcasts
                to it (``(H, W)`` for one mask over a batch of images).
            condition: one condition per sample (class labels ``(B,)``), or None.
            num_steps, cfg, cfg_schedule, temperature, generator, progress: as :meth:`generate`.
            return_tokens: return the completed tokens ``(B, N, D)`` instead of decoding them.
            keep_known: put the known values of ``data`` back into the decoded result.

        Returns:
            The completed data (``data``'s shape), or tokens with ``return_tokens``.

        Raises:
            ValueError: the order cannot condition on the known part (the causal order completes
                a prefix only), or the mask does not fit the data.
            NotImplementedError: the tokenizer cannot map a data mask to tokens (complete tokens
                with :meth:`complete_tokens` then).

        Example:
            ``top = torch.zeros(28, 28, dtype=torch.bool); top[:14] = True``
            ``model.complete(digits, top, labels)``
        """
        try:
            mask = torch.as_tensor(known_mask, dtype=torch.bool, device=data.device).expand_as(data)
        except RuntimeError as exc:
            raise ValueError(f"known_mask of shape {tuple(torch.as_tensor(known_mask).shape)} does not fit data of shape "
                             f"{tuple(data.shape)}") from exc
        was_training = self.training
        self.eval()
        try:
            tokens = self.tokenizer.encode(data.to(self.backbone.pos_embed.device))
            known = self.tokenizer.token_mask(mask).to(tokens.device)
        finally:
            self.train(was_training)
        completed = self.complete_tokens(tokens, known, condition, num_steps=num_steps, cfg=cfg, cfg_schedule=cfg_schedule,
                                         temperature=temperature, generator=generator, progress=progress)
        if return_tokens:
            return completed
        decoded = self.tokenizer.decode(completed)
        return torch.where(mask.to(decoded.device), data.to(decoded), decoded) if keep_known else decoded

    @torch.no_grad()
    def complete_tokens(
        self,
        tokens: torch.Tensor,
        known: torch.Tensor,
        condition: torch.Tensor | None = None,
        *,
        num_steps: int | None = None,
        cfg: float | None = None,
        cfg_schedule: str | None = None,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Tokens ``(B, N, D)`` whose positions not ``known (B, N)`` are generated, the known ones
        returned exactly as given (:mod:`carl.model.completion`; settings as :meth:`generate`)."""
        settings = dict(zip(("num_steps", "cfg", "cfg_schedule", "temperature"),
                            self._sampling(num_steps, cfg, cfg_schedule, temperature)))
        was_training = self.training
        self.eval()
        try:
            return completion.complete_tokens(self, tokens, known, condition, generator=generator, progress=progress,
                                              static=generation.static_by_default(tokens.device), **settings)
        finally:
            self.train(was_training)


def _with_resolved_tokenizer(config: ModelConfig, tokenizer) -> ModelConfig:
    """The config with the tokenizer's resolved options (a tokenizer given by ``path`` reads its
    architecture from that folder): config.json then rebuilds it without the folder."""
    resolved = getattr(tokenizer, "config", None)
    options = config.tokenizer.options
    if type(resolved) is not type(options) or resolved == options:
        return config
    return dataclasses.replace(config, tokenizer=Component(config.tokenizer.name, resolved))
