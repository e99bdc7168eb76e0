"""Write a TINY, randomly initialised Idefics3 (SmolVLM's architecture) + its processor to a local folder.

Nothing can be downloaded here, so tests and the latency bench exercise the Hugging Face adapter on a
model of the SAME classes as SmolVLM (Idefics3Config / Idefics3Model / Idefics3Processor with the PIL image
processor), only small. The folder has the layout of a hub snapshot (config.json, model.safetensors,
tokenizer.json, processor/preprocessor config), so loading it is exactly the code path of real weights:
``from_pretrained(folder, local_files_only=True)``.

The tokenizer is a word-level vocabulary built here (``tokenizers``): the instruction words the tests and
bench use plus the special tokens Idefics3's processor expects; unknown words map to <unk>.
"""

from __future__ import annotations

import os
from pathlib import Path

# Words of the instruction templates (vlaforge/envs/instructions) and of the tests; others become <unk>.
_WORDS = (
    "push pick place reach open close press the a an to of on in into and puck block drawer door button "
    "window handle goal target top down red green blue cube object move it put slide grab topdown left right"
).split()
_SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]


# SmolVLM-256M-Instruct's published architecture (its config.json): SigLIP-B/16 at 512 px (12 layers, 768 wide)
# + SmolLM2-135M-style text model (30 layers, 576 wide, GQA 9/3 heads), pixel-shuffle scale 4 -> 64 image
# tokens per image. With RANDOM weights: the latency bench measures the real model's compute without
# downloading it (the weights do not change the cost).
SMOLVLM_256M_SHAPE = dict(
    image_size=512, patch_size=16, scale_factor=4, vocab_size=49280,
    vision={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
    text={"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
          "num_key_value_heads": 3, "rope_theta": 100000.0, "max_position_embeddings": 8192},
)


def write_tiny_idefics3(
    folder: str | os.PathLike,
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 32,
    text_layers: int = 2,
    vision_layers: int = 1,
    seed: int = 0,
    scale_factor: int = 2,
    vocab_size: int | None = None,
    vision: dict | None = None,
    text: dict | None = None,
) -> Path:
    """-> the folder (absolute). Image tokens per image = (image_size / patch_size)**2 / scale_factor**2.
    ``vision`` / ``text`` override the sub-configs (e.g. SMOLVLM_256M_SHAPE); ``vocab_size`` pads the
    embedding table beyond the word-level vocabulary (ids past it are simply never produced)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, PreTrainedTokenizerFast
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    root = Path(folder).resolve()
    root.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(_SPECIAL + sorted(set(_WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=_SPECIAL[4:], padding_side="right",
    )
    scale = scale_factor
    image_seq_len = (image_size // patch_size) ** 2 // scale**2
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size}, do_image_splitting=False,
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_seq_len)

    config = Idefics3Config(
        image_token_id=vocab["<image>"],
        scale_factor=scale,
        vision_config={"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": vision_layers,
                       "num_attention_heads": 2, **(vision or {}), "image_size": image_size, "patch_size": patch_size},
        text_config={"model_type": "llama", "hidden_size": hidden, "intermediate_size": 2 * hidden,
                     "num_hidden_layers": text_layers, "num_attention_heads": 2, "num_key_value_heads": 1,
                     "max_position_embeddings": 512, **(text or {}),
                     "vocab_size": max(len(tokenizer), vocab_size or 0), "pad_token_id": vocab["<pad>"],
                     "bos_token_id": vocab["<s>"], "eos_token_id": vocab["</s>"]},
    )
    torch.manual_seed(seed)
    # Saved with its LM head, as SmolVLM snapshots are; the backbone loads it with AutoModel (no head).
    Idefics3ForConditionalGeneration(config).save_pretrained(root)
    processor.save_pretrained(root)
    return root


def write_tiny_paligemma(folder: str | os.PathLike, image_size: int = 32, patch_size: int = 8, hidden: int = 32,
                         text_layers: int = 2, seed: int = 0) -> Path:
    """A TINY random PaliGemma (SigLIP vision + Gemma text, PaliGemmaProcessor with the PIL SigLIP image
    processor) in the layout of a hub snapshot; image tokens per image = (image_size / patch_size)**2."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor, PreTrainedTokenizerFast
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    root = Path(folder).resolve()
    root.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<bos>", "<eos>", "<image>"] + sorted(set(_WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                                        eos_token="<eos>", additional_special_tokens=["<image>"])
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = (image_size // patch_size) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)  # adds loc/seg tokens
    config = PaliGemmaConfig(
        image_token_id=processor.image_token_id, projection_dim=hidden,
        vision_config={"model_type": "siglip_vision_model", "hidden_size": hidden, "intermediate_size": 2 * hidden,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": image_size,
                       "patch_size": patch_size, "projection_dim": hidden},
        text_config={"model_type": "gemma", "vocab_size": len(processor.tokenizer), "hidden_size": hidden,
                     "intermediate_size": 2 * hidden, "num_hidden_layers": text_layers, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "head_dim": hidden // 2},
    )
    torch.manual_seed(seed)
    PaliGemmaForConditionalGeneration(config).save_pretrained(root)
    processor.save_pretrained(root)
    return root
