#!/usr/bin/env python3
"""A `layret batch` manifest for the DreamBench protocol (DreamBooth's evaluation set).

For every subject folder of DIR that prompts_and_classes.txt lists (e.g. ../shared/data/
dreambooth: backpack, cat2, clock, dog6), one request per prompt of its list (object or live
subject, 25 each), with --seeds samples per prompt and the subject's photos as references
(sample k uses photo k mod R). The personalization of a subject is a template:

  tools/dreambench_manifest.py ../shared/data/dreambooth \
      --model ~/models/stable-diffusion-v1-5 \
      --personalization 'dreambooth:/models/dreambooth/{subject}' \
      --phrase 'sks {cls}' --seeds 4 > dreambench.jsonl
  layret batch dreambench.jsonl --out runs --shard env

30 subjects × 25 prompts × 4 seeds is the full protocol's 3,000 images. Only the standard
library is used.
"""
import argparse
import json
import os
import re
import sys

LIVE = {"cat", "dog"}  # DreamBench's live subjects are its cats and dogs


def read_protocol(path):
    text = open(path, encoding="utf-8").read()
    classes = {}
    section = text.split("Prompts", 1)[0]
    for line in section.splitlines():
        if "," in line and not line.startswith("subject_name"):
            name, cls = line.split(",", 1)
            classes[name.strip()] = cls.strip()
    lists = re.findall(r"prompt_list = \[(.*?)\]", text, re.S)
    if len(lists) != 2:
        sys.exit(f"{path}: expected two prompt_list blocks (object, live), found {len(lists)}")
    prompts = [re.findall(r"'(.*?)'\.format", block) for block in lists]
    return classes, prompts[0], prompts[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("subjects", help="folder with one subfolder of photos per subject")
    ap.add_argument("--protocol", help="prompts_and_classes.txt (default: SUBJECTS/prompts_and_classes.txt)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--personalization", required=True, action="append",
                    help="KIND:PATH template; {subject} and {cls} are filled in (repeatable)")
    ap.add_argument("--phrase", default="sks {cls}", help="the personal phrase P (default: 'sks {cls}')")
    ap.add_argument("--token", default=None,
                    help="the unique token the prompts use (default: the phrase without its class)")
    ap.add_argument("--seeds", type=int, default=4, help="samples per prompt (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="the noise seed of every request")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--size", type=int, default=None, help="width and height")
    ap.add_argument("--only", action="append", help="only these subjects (repeatable)")
    a = ap.parse_args()
    protocol = a.protocol or os.path.join(a.subjects, "prompts_and_classes.txt")
    classes, object_prompts, live_prompts = read_protocol(protocol)
    n = 0
    for subject in sorted(os.listdir(a.subjects)):
        folder = os.path.join(a.subjects, subject)
        if subject not in classes or not os.path.isdir(folder):
            continue
        if a.only and subject not in a.only:
            continue
        cls = classes[subject]
        photos = sorted(
            os.path.join(folder, f) for f in os.listdir(folder)
            if f.lower().endswith((".jpg", ".jpeg", ".png"))
        )
        if not photos:
            continue
        phrase = a.phrase.format(subject=subject, cls=cls)
        if a.token:
            token = a.token
        elif phrase.endswith(cls):
            token = phrase[: -len(cls)].strip()
        else:
            token = phrase
        prompts = live_prompts if cls in LIVE else object_prompts
        for i, template in enumerate(prompts):
            prompt = template.format(token, cls)
            if phrase not in prompt:
                sys.exit(f"prompt {prompt!r} does not contain the phrase {phrase!r}; set --phrase/--token")
            line = {
                "id": f"{subject}-{i:02d}",
                "model": a.model,
                "personalization": [p.format(subject=subject, cls=cls) for p in a.personalization],
                "phrase": phrase,
                "class": cls,
                "reference": photos,
                "prompt": [prompt],
                "num_samples": a.seeds,
                "seed": a.seed,
            }
            if a.steps:
                line["steps"] = a.steps
            if a.size:
                line["width"] = line["height"] = a.size
            print(json.dumps(line))
            n += 1
    print(f"{n} requests", file=sys.stderr)


if __name__ == "__main__":
    main()
