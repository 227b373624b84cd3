"""Items benchmark: a list learned as items against the same list learned as one text.

    python bench/items.py --data surnames.txt --minutes 4

--data holds one item per line. The README's list is the 88,799 surnames of the 1990 US
census, as the `names` package ships them (pip install names):

    python -c "import names, pathlib; d = pathlib.Path(names.__file__).parent; \
    print('\\n'.join(l.split()[0].title() for l in open(d / 'dist.all.last')))" > surnames.txt

Trains the defaults for --minutes twice: with --items, and on the same file as one long
text. Both are scored on the same held-out items (the items run's seeded random 10 %),
each item read from a zero state after its start (the item mark, or a newline for the
text model) and ending with its end (the mark, or a newline): nats per character with one
end counted per item. Then draws --samples items from the items run and reports how many
are complete and how many are new. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from char_rnn import CharRNN
from char_rnn.api import train_run
from char_rnn.data.corpus import load_corpus
from char_rnn.data.items import ItemBatches, find_items, split_items
from char_rnn.evaluate import evaluate_items
from char_rnn.novelty import CopyIndex


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="one item per line")
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--out", default=f"runs/items-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    out = Path(args.out)
    seconds = args.minutes * 60
    as_items = train_run(data=args.data, items="line", out=str(out / "items"), max_time=seconds, quiet=True)
    # The text model reads the items run's training items only, in the file's order, one a line.
    corpus = load_corpus(args.data)
    train, val = split_items(find_items(corpus.ids, corpus.vocab, "line"), 0.1, seed=0)
    training_text = out / "training-items.txt"
    training_text.write_text("".join(corpus.vocab.decode(train.item(i)) + "\n" for i in range(len(train))))
    as_text = train_run(data=str(training_text), out=str(out / "text"), max_time=seconds, quiet=True)

    items_model = CharRNN.load(out / "items", which="best")
    held_out = items_model.evaluate_file(split="val")
    text_model = CharRNN.load(out / "text", which="best")
    corpus = load_corpus(args.data, vocab=text_model.vocab)
    found = replace(find_items(corpus.ids, corpus.vocab, "line"), mark=text_model.vocab.index("\n"))
    train, val = split_items(found, 0.1, seed=0)
    text_loss = evaluate_items(text_model.model, val)
    assert text_loss.chars == held_out.chars  # the same items, the same predictions

    padding = ItemBatches(train, 64, 100, seed=0).padding_fraction
    drawn = items_model.generate(num_samples=args.samples, seed=0, length=200)
    index = CopyIndex.for_run(out / "items")
    complete = sum(len(item) < 200 for item in drawn)
    new = sum(not index.has_item(item) for item in drawn)
    figures = {
        "items": len(found),
        "held_out_items": held_out.items,
        "minutes": args.minutes,
        "items_run": {"steps": as_items.step, "held_out_loss": held_out.loss},
        "text_run": {"steps": as_text.step, "held_out_loss": text_loss.loss},
        "padding_fraction": round(padding, 4),
        "samples": args.samples,
        "complete": complete,
        "new": new,
        "examples": drawn[:12],
    }
    print(json.dumps(figures, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
