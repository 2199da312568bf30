"""ContinuousAR: tokenizer + conditioner + order + backbone + scoring rule."""

import dataclasses
import tempfile
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from carl.backbone import Backbone
from carl.config import Component, ModelConfig, RecipeConfig, from_dict, to_dict
from carl.logs import interactive
from carl.orders.base import Plan, sorted_positions
from carl.scores.base import Guidance, guidance_scale
from carl.weights import WeightsError, load_strict


class ContinuousAR(
    nn.Module,
    PyTorchModelHubMixin,
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
    writer produces the same complete model folder, see :mod:`carl.hub`):

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
            carl.config.RecipeError: a part names an unknown component or a wrong option.
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

    # ------------------------------------------------------------------------------------------
    # model folders (carl.hub holds the format; these keep the Hub mixin's names)

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        recipe: RecipeConfig | None = None,
        figures: dict | None = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        **push_to_hub_kwargs,
    ) -> str | None:
        """Write a complete model folder: ``config.json``, ``model.safetensors``, ``carl.json``
        (the plugins its parts need) and a model card; with ``recipe``, also ``recipe.yaml`` (the
        data and sampling settings ``carl sample`` uses; without one it uses carl's defaults).

        Args:
            save_directory: the folder (created if needed; the files above are replaced).
            recipe: the recipe the model was trained from, if any.
            figures: measured figures for the card (``results.json``), e.g. ``{"loss": 0.41}``.
            repo_id: with ``push_to_hub``, the Hub repository (default: the folder's name).
            push_to_hub: also upload the folder (see :meth:`push_to_hub`).

        Returns:
            The commit URL when pushing, else None.

        Raises:
            ValueError: ``recipe`` describes another model.
        """
        from carl.hub import write_model_folder_extras

        if recipe is not None and to_dict(recipe.model) != to_dict(self.config):
            raise ValueError("save_pretrained: the recipe's model section is not this model's config; "
                             "give the recipe the model was trained from, or none")
        super().save_pretrained(save_directory)  # config.json + model.safetensors (the mixin's pair)
        write_model_folder_extras(Path(save_directory), recipe, figures)
        if push_to_hub:
            return self.push_to_hub(repo_id or Path(save_directory).name, recipe=recipe, figures=figures, **push_to_hub_kwargs)
        return None

    def push_to_hub(
        self,
        repo_id: str,
        *,
        recipe: RecipeConfig | None = None,
        figures: dict | None = None,
        private: bool = False,
        token: str | None = None,
        commit_message: str = "Upload carl model",
    ) -> str:
        """Upload the model folder :meth:`save_pretrained` writes to ``repo_id`` (created if
        needed), its card loading it from there.

        Returns:
            The commit URL.

        Raises:
            carl.plugins.CarlError: one line when the Hub cannot be reached or refuses.
        """
        from huggingface_hub import HfApi

        from carl.hub import push

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, recipe=recipe, figures=figures)
            return push(tmp, repo_id, private=private, api=HfApi(token=token), commit_message=commit_message)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        map_location: str = "cpu",
        strict: bool = False,
    ) -> "ContinuousAR":
        """Load a trained model, in eval mode, quietly and from safetensors only.

        Args:
            pretrained_model_name_or_path: a model folder (a training output, or what
                :meth:`save_pretrained` wrote), a training checkpoint folder
                (``runs/x/checkpoints/step-N``: its EMA weights), or a Hub repo id (``user/name``,
                downloaded once into the Hub cache).
            revision: a Hub branch, tag or commit.
            token: a Hub token for private repositories (default: the logged-in one).
            cache_dir: the Hub cache folder.
            force_download: download again even if cached.
            local_files_only: never reach the Hub; use the cache only.
            map_location: the device to load the weights on.
            strict: kept for the Hub mixin's signature: carl always refuses missing or
                unexpected tensors.

        Returns:
            The model, in eval mode (call ``.train()`` to fine-tune it).

        Raises:
            carl.plugins.CarlError: the model needs a carl plugin that is not installed: the
                message gives the ``pip install`` line.
        """
        from carl.hub import is_checkpoint, open_model, read_config

        folder = Path(pretrained_model_name_or_path)
        if folder.is_dir():
            if is_checkpoint(folder):
                return open_model(folder).model.to(map_location)
            read_config(folder)  # a missing or corrupt config.json named in one line, before the mixin reads it
        return super().from_pretrained(
            pretrained_model_name_or_path, revision=revision, token=token, cache_dir=cache_dir,
            force_download=force_download, local_files_only=local_files_only, map_location=map_location, strict=strict,
        )

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision, cache_dir, force_download, local_files_only, token,
                         map_location: str = "cpu", strict: bool = False, **model_kwargs) -> "ContinuousAR":
        """The mixin's loader, but quiet, safetensors only (never a pickle), and naming the plugin
        to install (``carl.json``) before a missing one fails as an unknown component."""
        from carl.hub import WEIGHTS_FILE, check_requirements
        from carl.modelcard import REQUIREMENTS_FILE

        def fetch(filename: str, required: bool) -> Path | None:
            if Path(model_id).is_dir():
                path = Path(model_id) / filename
            else:
                from huggingface_hub import hf_hub_download
                from huggingface_hub.errors import EntryNotFoundError

                try:
                    path = Path(hf_hub_download(model_id, filename, revision=revision, cache_dir=cache_dir, token=token,
                                                force_download=force_download, local_files_only=local_files_only))
                except EntryNotFoundError:
                    path = Path(model_id) / filename  # absent on the Hub
            if required and not path.is_file():
                raise FileNotFoundError(f"{model_id} has no {filename}")
            return path if path.is_file() else None

        requirements = fetch(REQUIREMENTS_FILE, required=False)
        if requirements is not None:
            check_requirements(requirements.parent)
        model = cls(**model_kwargs)
        return cls._load_as_safetensor(model, str(fetch(WEIGHTS_FILE, required=True)), map_location, strict)

    @classmethod
    def _load_as_safetensor(cls, model, model_file, map_location, strict):
        """Every tensor of the model must be in ``model_file`` and nothing else (the mixin's
        default leaves missing ones at their random initialisation); errors name the file and
        the first missing or unexpected keys."""
        try:
            state = load_file(model_file, device=str(map_location))
        except Exception as exc:  # truncated or not safetensors: say which file
            raise WeightsError(f"cannot read the weights {model_file}: {type(exc).__name__}: {exc}") from exc
        load_strict(model, state, source=model_file)
        return model.eval()

    @classmethod
    def _load_as_pickle(cls, model, model_file, map_location, strict):
        raise WeightsError(f"{model_file}: carl reads model weights from model.safetensors only, not from pickles")

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
                hidden = self._hidden_bidirectional(tokens, cond, plan.known)
                return hidden[plan.targets], tokens[plan.targets]
            hidden = self._hidden_bidirectional(tokens, cond, plan.known, plan.positions(known=True))
            targets = plan.positions(known=False)  # fixed shapes: no host-device sync
            return _gather_rows(hidden, targets).flatten(0, 1), _gather_rows(tokens, targets).flatten(0, 1)
        ordered = torch.gather(tokens, 1, plan.order[..., None].expand_as(tokens))  # (B, N, D) in generation order
        hidden = self._hidden_causal(ordered, cond, plan.order)
        return hidden.flatten(0, 1), ordered.flatten(0, 1)

    def _hidden_bidirectional(self, tokens, cond, known, known_index: torch.Tensor | None = None) -> torch.Tensor:
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
            encoded = bb.decoder_embed(bb.encode(_gather_rows(x, keep)))
            y = bb.mask_token.to(encoded.dtype).expand(b, x.shape[1], -1).clone()
            y.scatter_(1, keep[..., None].expand_as(encoded), encoded)
        return bb(y + bb.pos_embed, causal=False)[:, s:] + bb.head_pos_embed

    def _causal_inputs(self, ordered: torch.Tensor, positions: torch.Tensor, next_positions: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``(B, L, C)`` at their positions, plus (random orders) the query of the
        position each input predicts next."""
        bb = self.backbone
        x = bb.token_proj(ordered.to(bb.pos_embed.dtype)) + bb.pos_embed[0, bb.buffer :][positions]
        if bb.query_embed is not None:
            x = x + bb.query_embed[0][next_positions]
        return x

    def _prefix(self, cond: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """Condition tokens with their positions; the last one also queries the first position to generate."""
        bb = self.backbone
        prefix = cond + bb.pos_embed[:, : bb.buffer]
        if bb.query_embed is not None:
            prefix = torch.cat([prefix[:, :-1], prefix[:, -1:] + bb.query_embed[0][first][:, None]], dim=1)
        return prefix

    def _hidden_causal(self, ordered: torch.Tensor, cond: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: ``hidden[:, i]`` sees the condition and ``ordered[:, :i]``; returns ``(B, N, C)``."""
        bb = self.backbone
        inputs = self._causal_inputs(ordered[:, :-1], order[:, :-1], order[:, 1:])
        x = torch.cat([self._prefix(cond, order[:, 0]), inputs], dim=1)
        return bb(x, causal=True)[:, bb.buffer - 1 :]

    # ------------------------------------------------------------------------------------------
    # generation

    @torch.no_grad()
    def generate(
        self,
        condition: torch.Tensor | None = None,
        *,
        batch_size: int | None = None,
        num_steps: int = 64,
        cfg: float = 1.0,
        cfg_schedule: str = "linear",
        temperature: float = 1.0,
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
            steps = tqdm(schedule, desc="generating", leave=False, disable=not interactive(progress))
            sampler = dict(cfg=cfg, cfg_schedule=cfg_schedule, temperature=temperature, generator=generator)
            if self.order.attention == "bidirectional":
                tokens = self._generate_bidirectional(cond, order, steps, **sampler)
            else:
                static = static_by_default(device) if static_shapes is None else static_shapes
                tokens = self._generate_causal(cond, order, steps, prompt=prompt, static=static, **sampler)
        finally:
            self.train(was_training)
        return tokens if return_tokens else self.tokenizer.decode(tokens)

    def _sample(self, hidden, known_after, *, cfg, cfg_schedule, temperature, generator) -> torch.Tensor:
        """One scoring-rule draw per conditional row; the second half of ``hidden`` is unconditional under CFG."""
        guidance = None
        if cfg != 1.0:
            hidden, uncond = hidden.chunk(2, dim=0)
            guidance = Guidance(uncond=uncond, scale=guidance_scale(cfg, cfg_schedule, known_after, self.tokenizer.num_tokens))
        return self.score.sample(hidden, temperature=temperature, guidance=guidance, generator=generator)

    def _generate_bidirectional(self, cond, order, steps, **sampler) -> torch.Tensor:
        batch, n, d = order.shape[0], self.tokenizer.num_tokens, self.tokenizer.token_dim
        rows = cond.shape[0] // batch  # 2 under CFG
        ranks = order.argsort(dim=-1)  # (B, N): step index at which each position is written
        tokens = cond.new_zeros(batch, n, d, dtype=torch.float32)
        known_before = 0
        for known_after in steps:  # gathers and scatters of fixed-size indices: no host-device sync
            known = (ranks < known_before).repeat(rows, 1)
            known_index = sorted_positions(order, 0, known_before).repeat(rows, 1)  # (rows * B, K)
            hidden = self._hidden_bidirectional(tokens.repeat(rows, 1, 1), cond, known, known_index)
            new = sorted_positions(order, known_before, known_after)  # (B, k), the same count per row
            picked = _gather_rows(hidden, new.repeat(rows, 1)).flatten(0, 1)  # (rows * B * k, C), conditional rows first
            drawn = self._sample(picked, known_after, **sampler).view(batch, -1, d)
            tokens.scatter_(1, new[..., None].expand_as(drawn), drawn)
            known_before = known_after
        return tokens

    def _generate_causal(self, cond, order, steps, prompt=None, static=False, **sampler) -> torch.Tensor:
        batch, n, d = order.shape[0], self.tokenizer.num_tokens, self.tokenizer.token_dim
        rows = cond.shape[0] // batch
        order_rows = order.repeat(rows, 1)
        cache = self.backbone.new_cache(cond.shape[0], like=cond, static=static)
        x = self._prefix(cond, order_rows[:, 0])
        ordered = cond.new_zeros(batch, n, d, dtype=torch.float32)
        given = 0 if prompt is None else prompt.shape[1]
        if given:  # the prompt goes through in the same pass as the condition
            ordered[:, :given] = prompt.to(ordered)
            tokens = ordered[:, :given].repeat(rows, 1, 1)
            x = torch.cat([x, self._causal_inputs(tokens, order_rows[:, :given], order_rows[:, 1 : given + 1])], dim=1)
        hidden = self.backbone(x, causal=True, cache=cache)[:, -1].contiguous()  # the strides of every later step
        for i, known_after in enumerate(steps):
            if i < given:
                continue
            ordered[:, i] = self._sample(hidden, known_after, **sampler)
            if i + 1 < n:
                token = ordered[:, i : i + 1].repeat(rows, 1, 1)
                x = self._causal_inputs(token, order_rows[:, i : i + 1], order_rows[:, i + 1 : i + 2])
                hidden = self.backbone(x, causal=True, cache=cache)[:, -1]
        tokens = torch.empty_like(ordered)
        tokens.scatter_(1, order[..., None].expand_as(ordered), ordered)
        return tokens


def static_by_default(device: torch.device) -> bool:
    """Whether causal decoding uses the fixed-shape KV cache when not told: on CUDA, where
    compiled steps and CUDA graphs need it; a CPU runs the growing cache faster."""
    return device.type == "cuda"


def _with_resolved_tokenizer(config: ModelConfig, tokenizer) -> ModelConfig:
    """The config with the tokenizer's resolved options (a tokenizer given by ``path`` reads its
    architecture from that folder): config.json then rebuilds it without the folder."""
    resolved = getattr(tokenizer, "config", None)
    options = config.tokenizer.options
    if type(resolved) is not type(options) or resolved == options:
        return config
    return dataclasses.replace(config, tokenizer=Component(config.tokenizer.name, resolved))


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x (B, N, C)`` at ``index (B, K)`` -> ``(B, K, C)``."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))
