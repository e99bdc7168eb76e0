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


def write_tiny_idefics3(
    folder: str | os.PathLike,
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 32,
    text_layers: int = 2,
    vision_layers: int = 1,
    seed: int = 0,
) -> Path:
    """-> the folder (absolute). image tokens per image = (image_size / patch_size)**2 / scale_factor**2."""
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
    scale = 2
    image_seq_len = (image_size // patch_size) ** 2 // scale**2
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size}, do_image_splitting=False,
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_seq_len)

    config = Idefics3Config(
        image_token_id=vocab["<image>"],
        scale_factor=scale,
        vision_config={"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": vision_layers,
                       "num_attention_heads": 2, "image_size": image_size, "patch_size": patch_size},
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": hidden,
                     "intermediate_size": 2 * hidden, "num_hidden_layers": text_layers, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "max_position_embeddings": 512, "pad_token_id": vocab["<pad>"],
                     "bos_token_id": vocab["<s>"], "eos_token_id": vocab["</s>"]},
    )
    torch.manual_seed(seed)
    # Saved with its LM head, as SmolVLM snapshots are; the backbone loads it with AutoModel (no head).
    Idefics3ForConditionalGeneration(config).save_pretrained(root)
    processor.save_pretrained(root)
    return root
