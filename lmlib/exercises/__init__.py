"""Checkers for the book's exercises: your function against a reference, on fresh random inputs.

``lmlib.exercises.check_<name>(my_function)`` runs your function on edge cases and on new random
cases at every call, and returns a :class:`Result`. In a notebook the result shows as one line:
``✓ my_softmax passes 12 checks``, or ``not done yet: write my_softmax above`` while the stub still
raises ``NotImplementedError``, or, when an answer differs, the likely mistake (an overflow, the
wrong axis, a transposed matrix, a mask off by one, a missing 1/sqrt(d) scale, ...) with the
failing input, the expected output and yours. It is truthy only when everything passed, so a
solution cell can ``assert`` it. Every checker accepts ``trials=`` (how many random cases) and
``verbose=True`` (also print the result).

Layout: one module per chapter, named for it (``ch1_background`` ... ``ch6_challenges``), each
listing its checkers and their references in ``__all__``; the shared machinery, the comparison
and the recognisers of common mistakes live in ``core``. Every name is available from here.

API summary
-----------
check(fn, reference, make_case, *, hint, edge_cases=(), mistakes=(), trials=5, ...) -> Result
    The machinery every checker uses (see ``lmlib.exercises.core``).
Mistake(says, fn)
    A known wrong solution and what to tell a reader whose answer matches it.
Result(function, status, checks, diagnosis='', details=())   .passed .status .diagnosis .checks
    Truthy when passed; shows as one line in a notebook.

Chapter 1, ``ch1_background``:
check_perplexity(fn, **options); reference_perplexity(target_probs)
check_bigram_probs(fn, **options); reference_bigram_probs(ids, vocab_size, k)
check_ngram_counts(fn, **options); reference_ngram_counts(ids, n)
check_continuation_counts(fn, **options); reference_continuation_counts(ids, vocab_size)
check_kneser_ney_bigram(fn, **options); reference_kneser_ney_bigram(ids, vocab_size, discount)
check_bigram_logit_gradient(fn, **options); reference_bigram_logit_gradient(logits, counts)
check_perplexity_from_logits(fn, **options); reference_perplexity_from_logits(logits, targets)
check_lstm_parameter_count(fn, **options); reference_lstm_parameter_count(vocab_size, emb_dim, hidden_dim, num_layers)
check_doubling_time(fn, **options); reference_doubling_time(years, params)

Chapter 2, ``ch2_attention``:
check_softmax(fn, **options); reference_softmax(x)
check_attention(fn, **options); reference_attention(q, k, v, mask=None)
check_multi_head(fn, **options); reference_multi_head(x, params, n_heads, mask=None)
check_rope(fn, **options); reference_rope(x, offset)
check_online_softmax(fn, **options); reference_online_softmax(m1, l1, m2, l2)

Chapter 3, ``ch3_transformer``:
check_layer_norm(fn, **options); reference_layer_norm(x, weight, bias, eps)
check_block(fn, **options); reference_block(x, params, n_head)
check_param_count(fn, **options); reference_param_count(vocab_size, block_size, n_layer, n_embd)
check_gpt_forward(fn, **options); reference_gpt_forward(params, idx, targets, n_head)
check_kv_cache_step(fn, **options); reference_kv_cache_step(q, k_new, v_new, k_cache, v_cache)
check_sample(fn, **options); reference_sample(model, idx, steps, temperature=1.0, top_k=None, top_p=None, generator=None)

Chapter 4, ``ch4_pretraining``:
check_bpe_merge(fn, **options); reference_bpe_merge(ids, pair, new_id)
check_train_bpe(fn, **options); reference_train_bpe(text, num_merges)
check_minhash_signature(fn, **options); reference_minhash_signature(hashes, a, b)
check_repeated_lines(fn, **options); reference_repeated_lines(docs, min_docs)
check_lr_schedule(fn, **options); reference_lr_schedule(step, lr, min_lr, warmup_steps, max_steps)
check_clip_by_global_norm(fn, **options); reference_clip_by_global_norm(grads, max_norm)
check_adamw_step(fn, **options); reference_adamw_step(param, grad, m, v, step, lr, betas, eps, weight_decay)
check_train_step(fn, **options); reference_train_step(model, optimizer, x, y, max_norm)
check_newton_schulz(fn, **options); reference_newton_schulz(matrix, steps)
check_your_gpt(fn, reference_losses=None, *, tolerance=None, seed=0, setup=None, verbose=False); reference_your_gpt(config)
your_gpt_setup() -> dict; your_gpt_val_loss(model_class, seed=0, setup=None) -> float
check_split_qkv(fn, **options); reference_split_qkv(weight, bias)
check_chinchilla_split(fn, **options); reference_chinchilla_split(compute, tokens_per_param=20.0)
check_chinchilla_size(fn, **options); reference_chinchilla_size(tokens_per_s, params, minutes)
check_variant(fn, **options); reference_variant(recipe)

Chapter 5, ``ch5_applications``:
check_f1_from_confusion(fn, **options); reference_f1_from_confusion(cm, positive)
check_last_token_pool(fn, **options); reference_last_token_pool(h, mask)
check_modified_precision(fn, **options); reference_modified_precision(candidate, references, n)
check_corpus_bleu(fn, **options); reference_corpus_bleu(candidates, references)
check_decoder_example(fn, **options); reference_decoder_example(src_ids, tgt_ids, sep_id, eos_id)
check_sft_targets(fn, **options); reference_sft_targets(ids, prompt_len)
check_lora_forward(fn, **options); reference_lora_forward(x, W, A, B, scale)
check_bio_to_spans(fn, **options); reference_bio_to_spans(tags)
check_squad_f1(fn, **options); reference_squad_f1(prediction, gold)
check_align_labels(fn, **options); reference_align_labels(word_of_token, word_labels)
check_context_windows(fn, **options); reference_context_windows(n_tokens, room, stride)
check_bm25_scores(fn, **options); reference_bm25_scores(query, documents, k1, b)
check_assistant_mask(fn, **options); reference_assistant_mask(ids, special)
check_dpo_loss(fn, **options); reference_dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
check_choice_scores(fn, **options); reference_choice_scores(model, context, endings)

Chapter 6, ``ch6_challenges``:
check_quantize_int8(fn, **options); reference_quantize_int8(weight)
check_quantize_groups(fn, **options); reference_quantize_groups(weight, group_size)
check_prune_mask(fn, **options); reference_prune_mask(weight, sparsity)
check_speculative_residual(fn, **options); reference_speculative_residual(p, q)
check_gpu_hours(fn, **options); reference_gpu_hours(n_params, n_tokens, peak_flops, mfu)
check_exposure(fn, **options); reference_exposure(log_perplexities, index)
check_estimated_exposure(fn, **options); reference_estimated_exposure(canary_log_perplexity, sample_log_perplexities)
check_plant_canary(fn, **options); reference_plant_canary(docs, text, k)
check_dp_gradient(fn, **options); reference_dp_gradient(grads, max_norm, noise_multiplier, expected_batch, noise)
check_swap_words(fn, **options); reference_swap_words(text, pairs)
check_keyboard_typos(fn, **options); reference_keyboard_typos(text, rate, rng)
check_logit_lens_layer(fn, **options); reference_logit_lens_layer(stream, norm_weight, norm_bias, unembed)
check_previous_token_score(fn, **options); reference_previous_token_score(weights)
check_ridge_probe_accuracy(fn, **options); reference_ridge_probe_accuracy(x_train, y_train, x_test, y_test, ridge)
"""
import importlib
import pkgutil

from lmlib.exercises import (
    ch1_background,
    ch2_attention,
    ch3_transformer,
    ch4_pretraining,
    ch5_applications,
    ch6_challenges,
    core,
)
from lmlib.exercises.core import Mistake, Result, check

#: The chapter modules, in the book's order.
CHAPTERS = (ch1_background, ch2_attention, ch3_transformer, ch4_pretraining, ch5_applications, ch6_challenges)

# Any other module of the package is exported too, so that nothing written is lost;
# tests/test_exercise_audit.py insists that each checker sits in its chapter's module.
_OTHERS = tuple(importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__)
                if info.name != "core" and f"{__name__}.{info.name}" not in {m.__name__ for m in CHAPTERS})

__all__ = list(core.__all__)
for _module in CHAPTERS + _OTHERS:
    for _name in _module.__all__:
        globals()[_name] = getattr(_module, _name)
    __all__ += list(_module.__all__)
del _module, _name
