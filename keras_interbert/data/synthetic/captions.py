"""English and Chinese captions from a scene's facts."""

import numpy as np

from keras_interbert.data.synthetic.geometry import spatial_relation
from keras_interbert.data.synthetic.vocabulary import INVERSE_RELATION
from keras_interbert.data.synthetic.vocabulary import _COLOUR_ZH
from keras_interbert.data.synthetic.vocabulary import _NUMBER_EN
from keras_interbert.data.synthetic.vocabulary import _NUMBER_ZH
from keras_interbert.data.synthetic.vocabulary import _RELATION_EN
from keras_interbert.data.synthetic.vocabulary import _RELATION_ZH
from keras_interbert.data.synthetic.vocabulary import _SHAPE_ZH
from keras_interbert.data.synthetic.vocabulary import _SIZE_ZH


def _article(word):
    return "an" if word[0] in "aeiou" else "a"


def _plural(shape):
    return shape + "es" if shape.endswith("s") else shape + "s"


def _mention_en(mention):
    words = [w for w in (mention["size"], mention["colour"]) if w]
    if mention["count"] == 1:
        words.append(mention["shape"])
        return f"{_article(words[0])} {' '.join(words)}"
    words.append(_plural(mention["shape"]))
    return f"{_NUMBER_EN[mention['count']]} {' '.join(words)}"


def _mention_zh(mention, rng):
    text = _NUMBER_ZH[mention["count"]] + "个"
    if mention["size"]:
        text += _SIZE_ZH[mention["size"]] + "的"
    if mention["colour"]:
        text += _COLOUR_ZH[mention["colour"]]
        if not mention["size"] and rng.random() < 0.3:
            text += "的"
    return text + _SHAPE_ZH[mention["shape"]]


def _join_en(items):
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _join_zh(items):
    return items[0] if len(items) == 1 else "、".join(items[:-1]) + "和" + items[-1]


def _make_mention(unit, objects, rng, in_list=False):
    """A mention of one object (int) or of a whole colour-shape group (tuple)."""
    if isinstance(unit, tuple):
        members = list(unit)
        first = objects[members[0]]
        sizes = {objects[k]["size"] for k in members}
        size = first["size"] if len(sizes) == 1 and rng.random() < 0.5 else None
        return {"count": len(members), "size": size, "colour": first["colour"],
                "shape": first["shape"], "objects": members}
    obj = objects[unit]
    colour = obj["colour"] if in_list or rng.random() < 0.9 else None
    size = obj["size"] if rng.random() < 0.6 else None
    return {"count": 1, "size": size, "colour": colour, "shape": obj["shape"],
            "objects": [unit]}


def _unit_members(unit):
    return list(unit) if isinstance(unit, tuple) else [unit]


def _fact_pool(objects, image_size):
    groups = {}
    for k, obj in enumerate(objects):
        groups.setdefault((obj["colour"], obj["shape"]), []).append(k)
    units = [k for k in range(len(objects))]
    units += [tuple(m) for m in groups.values() if len(m) > 1]
    pool = [("exists", u) for u in units]
    for subject in units:
        members = _unit_members(subject)
        for ref in range(len(objects)):
            # "a red square above a red square" is true but says little.
            if ref in members or (objects[ref]["colour"], objects[ref]["shape"]) \
                    == (objects[members[0]]["colour"], objects[members[0]]["shape"]):
                continue
            rels = {spatial_relation(objects[m]["centroid"],
                                     objects[ref]["centroid"], image_size)
                    for m in members}
            if len(rels) == 1 and None not in rels:
                pool.append(("relation", subject, rels.pop(), ref))
    pool.append(("list", tuple(tuple(m) if len(m) > 1 else m[0]
                               for m in groups.values())))
    return pool


def _render_fact(fact, objects, rng):
    kind = fact[0]
    if kind == "exists":
        m = _make_mention(fact[1], objects, rng)
        plural = m["count"] > 1
        en_templates = (["{m}", "there are {m}", "an image of {m}",
                         "a picture with {m} in it"] if plural else
                        ["{m}", "there is {m}", "an image of {m}",
                         "a picture with {m} in it", "{m} in the picture"])
        zh_templates = ["{m}", "图中有{m}", "画面里有{m}", "图片上有{m}"]
        en = en_templates[rng.integers(len(en_templates))].format(m=_mention_en(m))
        zh = zh_templates[rng.integers(len(zh_templates))].format(
            m=_mention_zh(m, rng))
        return en, zh, {"type": "exists", "mention": m}
    if kind == "relation":
        _, subject, relation, ref = fact
        s = _make_mention(subject, objects, rng)
        r = _make_mention(ref, objects, rng)
        if rng.random() < 0.5:
            s, r, relation = r, s, INVERSE_RELATION[relation]
        be = "is" if s["count"] == 1 else "are"
        en_templates = ["{s} {rel} {r}", "{s} {be} {rel} {r}",
                        "there {be} {s} {rel} {r}"]
        en = en_templates[rng.integers(len(en_templates))].format(
            s=_mention_en(s), r=_mention_en(r), be=be, rel=_RELATION_EN[relation])
        zh_rel = _RELATION_ZH[relation][rng.integers(2)]
        zh_templates = ["{s}在{r}的{rel}", "{s}位于{r}的{rel}", "{r}的{rel}有{s}"]
        zh = zh_templates[rng.integers(len(zh_templates))].format(
            s=_mention_zh(s, rng), r=_mention_zh(r, rng), rel=zh_rel)
        return en, zh, {"type": "relation", "subject": s, "relation": relation,
                        "reference": r}
    units = list(fact[1])
    rng.shuffle(units)
    mentions = [_make_mention(u, objects, rng, in_list=True) for u in units]
    total = len(objects)
    if total == 1:
        m = mentions[0]
        body = _mention_en(m).split(" ", 1)[1]
        en = [f"a single {body}", f"only {_mention_en(m)}",
              f"{_mention_en(m)} alone"][rng.integers(3)]
        zh = ["只有{m}", "图中只有{m}"][rng.integers(2)].format(m=_mention_zh(m, rng))
    else:
        items_en = _join_en([_mention_en(m) for m in mentions])
        items_zh = _join_zh([_mention_zh(m, rng) for m in mentions])
        n_en = _NUMBER_EN[total]
        en = ["{n} shapes: {items}", "{items}", "an image with {items}",
              "{n} objects: {items}"][rng.integers(4)].format(n=n_en, items=items_en)
        zh = ["图中共有{n}个图形：{items}", "{items}", "画面里有{items}"][
            rng.integers(3)].format(n=_NUMBER_ZH[total], items=items_zh)
    return en, zh, {"type": "list", "mentions": mentions, "total": total}


def _captions(objects, rng, image_size, min_captions, max_captions):
    pool = _fact_pool(objects, image_size)
    weight = {"exists": 1.0, "relation": 2.0, "list": 1.5}
    p = np.array([weight[f[0]] for f in pool])
    order = rng.choice(len(pool), size=len(pool), replace=False, p=p / p.sum())
    wanted = int(rng.integers(min_captions, max_captions + 1))
    captions, seen = [], set()
    for attempt in range(4 * max_captions + 8):
        if len(captions) >= wanted:
            break
        fact = pool[order[attempt % len(order)]]
        en, zh, structured = _render_fact(fact, objects, rng)
        if en in seen:
            continue
        seen.add(en)
        captions.append({"en": en, "zh": zh, "fact": structured})
    return captions
