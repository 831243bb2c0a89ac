"""Write the six matched non-medical control concept sets (``medinterp/concepts/data/*_control.yaml``).

The controls are built so that geometry can compare like with like (issue 20, item 3): for every scored
labelling the control has at least the medical set's class count and, class by class (sorted), at least as
many items; the same number of templates in frames of the same token length around the item (wherever
grammar allows); items whose token counts cover the medical items' on both offline tokenizers; factual,
common-knowledge labels. ``scripts/control_structure.py`` prints the comparison.

The data live here (one tuple per row) so a reviewer can read a whole set at once; run

    .venv/bin/python scripts/build_control_sets.py

to rewrite the YAML files (they are the shipped data; this script is how they were made).
"""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "medinterp" / "concepts" / "data"
VERSION = "3.0.0"


def q(s: object) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return json.dumps(str(s), ensure_ascii=False)


def row(d: dict) -> str:
    parts = []
    for k, v in d.items():
        if isinstance(v, bool) or v is None:
            raise ValueError(f"{k}: {v!r}")
        parts.append(f"{k}: {v if isinstance(v, (int, float)) else q(v)}")
    return "  - {" + ", ".join(parts) + "}"


def header(name: str, comment: str, description: str, provenance: str, item: str, labels: dict, columns: list,
           templates: list) -> list[str]:
    out = [f"# {comment}", f"name: {name}", "kind: concepts", f'version: "{VERSION}"', "description: >"]
    out += ["  " + description.strip(), "provenance: >", "  " + provenance.strip(), f"item: {item}", "labels:"]
    for lab, spec in labels.items():
        out.append(f"  {lab}:")
        out.append(f"    type: {spec['type']}")
        if spec.get("values"):
            out.append("    values: [" + ", ".join(q(v) for v in spec["values"]) + "]")
    out.append("columns: [" + ", ".join(columns) + "]")
    out.append("templates:")
    for t in templates:
        if isinstance(t, tuple):
            out.append(f"  - text: {q(t[0])}")
            out.append(f"    answer: {t[1]}")
        else:
            out.append(f"  - text: {q(t)}")
    out.append("items:")
    return out


def write(name: str, lines: list[str]) -> None:
    (DATA / f"{name}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------ drugs
# Control for `drugs` (152 drugs; specialty 15 classes; mechanism 90 classes): named food ingredients, each
# with the cuisine it belongs to (like specialty) and what kind of food it is (like mechanism: a kind spans
# cuisines, a cuisine holds many kinds). Names are single foreign words or short phrases, split into
# several sub-words like drug names. (ingredient, cuisine, kind, use)
INGREDIENTS = [
    # Italian
    ("pancetta", "Italian", "cured pork", " pasta"),
    ("prosciutto", "Italian", "dry-cured ham", " sandwiches"),
    ("guanciale", "Italian", "cured pork", " carbonara"),
    ("mortadella", "Italian", "pork sausage", " sandwiches"),
    ("nduja", "Italian", "pork sausage", " pizza"),
    ("mozzarella", "Italian", "fresh cheese", " pizza"),
    ("burrata", "Italian", "fresh cheese", " salads"),
    ("ricotta", "Italian", "whey cheese", " lasagne"),
    ("mascarpone", "Italian", "cream cheese", " tiramisu"),
    ("parmesan", "Italian", "hard cheese", " pasta"),
    ("Pecorino Romano", "Italian", "hard cheese", " pasta"),
    ("gorgonzola", "Italian", "blue cheese", " sauces"),
    ("taleggio", "Italian", "semi-soft cheese", " risotto"),
    ("fontina", "Italian", "semi-soft cheese", " fondue"),
    ("arborio rice", "Italian", "short-grain rice", " risotto"),
    ("pesto", "Italian", "herb sauce", " pasta"),
    ("balsamic vinegar", "Italian", "vinegar", " salads"),
    ("passata", "Italian", "tomato puree", " sauces"),
    ("semolina", "Italian", "durum wheat flour", " pasta"),
    ("orzo", "Italian", "pasta", " soups"),
    ("limoncello", "Italian", "fruit liqueur", " cocktails"),
    ("amaretto", "Italian", "nut liqueur", " cocktails"),
    ("grappa", "Italian", "brandy", " drinking"),
    ("cannellini beans", "Italian", "beans", " soups"),
    ("Grana Padano", "Italian", "hard cheese", " pasta"),
    ("Pecorino Sardo", "Italian", "hard cheese", " pasta"),
    ("stracciatella", "Italian", "fresh cheese", " salads"),
    ("San Marzano tomatoes", "Italian", "plum tomatoes", " pizza"),
    ("colatura di alici", "Italian", "fish sauce", " pasta"),
    ("finocchiona", "Italian", "pork sausage", " sandwiches"),
    ("soppressata", "Italian", "pork sausage", " pizza"),
    ("pangrattato", "Italian", "breadcrumbs", " pasta"),
    ("Castelvetrano olives", "Italian", "olives", " antipasti"),
    ("caciocavallo", "Italian", "stretched-curd cheese", " grilling"),
    ("pasta", "Italian", "pasta", " dinner"),
    # Japanese
    ("miso", "Japanese", "fermented soybean paste", " soup"),
    ("mirin", "Japanese", "rice wine", " teriyaki"),
    ("sake", "Japanese", "rice wine", " drinking"),
    ("dashi", "Japanese", "fish stock", " soup"),
    ("nori", "Japanese", "seaweed", " sushi"),
    ("kombu", "Japanese", "seaweed", " stock"),
    ("wasabi", "Japanese", "rhizome", " sushi"),
    ("panko", "Japanese", "breadcrumbs", " frying"),
    ("katsuobushi", "Japanese", "dried fish flakes", " stock"),
    ("soba", "Japanese", "noodles", " soup"),
    ("udon", "Japanese", "noodles", " soup"),
    ("matcha", "Japanese", "green tea powder", " lattes"),
    ("umeboshi", "Japanese", "pickled fruit", " rice"),
    ("ponzu", "Japanese", "dipping sauce", " dipping"),
    ("shiitake", "Japanese", "mushroom", " soups"),
    ("shichimi togarashi", "Japanese", "spice blend", " noodles"),
    ("yuzu", "Japanese", "citrus fruit", " dressings"),
    ("shiso", "Japanese", "fresh herb", " sushi"),
    ("somen", "Japanese", "noodles", " soup"),
    ("sushi rice", "Japanese", "short-grain rice", " rolls"),
    # Indian
    ("garam masala", "Indian", "spice blend", " curry"),
    ("tandoori masala", "Indian", "spice blend", " chicken"),
    ("chaat masala", "Indian", "spice blend", " snacks"),
    ("panch phoron", "Indian", "whole spice mix", " vegetables"),
    ("ghee", "Indian", "clarified butter", " frying"),
    ("paneer", "Indian", "fresh cheese", " curry"),
    ("basmati rice", "Indian", "long-grain rice", " biryani"),
    ("asafoetida", "Indian", "plant resin", " curry"),
    ("fenugreek", "Indian", "seed spice", " curry"),
    ("ajwain", "Indian", "seed spice", " bread"),
    ("amchur", "Indian", "ground spice", " chutney"),
    ("curry leaves", "Indian", "fresh herb", " tempering"),
    ("chana dal", "Indian", "split pulses", " curry"),
    ("urad dal", "Indian", "split pulses", " dosa"),
    ("jaggery", "Indian", "unrefined sugar", " sweets"),
    ("mustard oil", "Indian", "plant oil", " frying"),
    ("nigella seeds", "Indian", "seed spice", " naan"),
    # Chinese
    ("hoisin sauce", "Chinese", "fermented bean sauce", " duck"),
    ("oyster sauce", "Chinese", "seafood sauce", " stir-frying"),
    ("XO sauce", "Chinese", "seafood sauce", " noodles"),
    ("black bean sauce", "Chinese", "fermented bean sauce", " stir-frying"),
    ("doubanjiang", "Chinese", "fermented bean paste", " tofu"),
    ("Shaoxing wine", "Chinese", "rice wine", " braising"),
    ("five-spice powder", "Chinese", "spice blend", " pork"),
    ("Sichuan pepper", "Chinese", "pepper", " seasoning"),
    ("bok choy", "Chinese", "leafy cabbage", " stir-frying"),
    ("char siu", "Chinese", "roast pork", " buns"),
    ("lap cheong", "Chinese", "pork sausage", " rice"),
    ("wonton wrappers", "Chinese", "wrappers", " dumplings"),
    ("chilli oil", "Chinese", "flavoured oil", " dumplings"),
    ("century eggs", "Chinese", "preserved eggs", " congee"),
    ("Chinkiang vinegar", "Chinese", "vinegar", " dumplings"),
    # Mexican
    ("masa harina", "Mexican", "corn flour", " tortillas"),
    ("chipotle", "Mexican", "dried chilli", " salsa"),
    ("ancho chilli", "Mexican", "dried chilli", " sauces"),
    ("jalapeño", "Mexican", "fresh chilli", " nachos"),
    ("tomatillo", "Mexican", "husk tomato", " salsa"),
    ("queso fresco", "Mexican", "fresh cheese", " tacos"),
    ("cotija", "Mexican", "hard cheese", " tacos"),
    ("epazote", "Mexican", "fresh herb", " beans"),
    ("mole poblano", "Mexican", "chilli sauce", " chicken"),
    ("tequila", "Mexican", "agave spirit", " margaritas"),
    ("mezcal", "Mexican", "agave spirit", " cocktails"),
    ("corn tortillas", "Mexican", "flatbread", " tacos"),
    ("refried beans", "Mexican", "beans", " burritos"),
    ("guajillo", "Mexican", "dried chilli", " sauces"),
    ("habanero", "Mexican", "fresh chilli", " salsa"),
    # French
    ("crème fraîche", "French", "cream", " sauces"),
    ("Dijon mustard", "French", "mustard", " vinaigrette"),
    ("herbes de Provence", "French", "dried herb blend", " roasting"),
    ("brie", "French", "soft cheese", " baking"),
    ("camembert", "French", "soft cheese", " baking"),
    ("Roquefort", "French", "blue cheese", " salads"),
    ("comté", "French", "hard cheese", " fondue"),
    ("brioche", "French", "bread", " toast"),
    ("cognac", "French", "brandy", " cocktails"),
    ("Calvados", "French", "brandy", " drinking"),
    ("fleur de sel", "French", "sea salt", " seasoning"),
    ("crème de cassis", "French", "fruit liqueur", " cocktails"),
    ("Puy lentils", "French", "lentils", " salads"),
    ("Bayonne ham", "French", "dry-cured ham", " sandwiches"),
    ("Brillat-Savarin", "French", "soft cheese", " cheeseboards"),
    # Spanish
    ("chorizo", "Spanish", "pork sausage", " stews"),
    ("sobrasada", "Spanish", "pork sausage", " toast"),
    ("morcilla", "Spanish", "offal sausage", " stews"),
    ("jamón serrano", "Spanish", "dry-cured ham", " tapas"),
    ("manchego", "Spanish", "hard cheese", " tapas"),
    ("pimentón", "Spanish", "ground spice", " paella"),
    ("bomba rice", "Spanish", "short-grain rice", " paella"),
    ("sherry vinegar", "Spanish", "vinegar", " gazpacho"),
    ("membrillo", "Spanish", "fruit paste", " cheese"),
    ("cava", "Spanish", "wine", " celebrations"),
    # Greek
    ("feta", "Greek", "brined cheese", " salads"),
    ("kefalotyri", "Greek", "hard cheese", " saganaki"),
    ("graviera", "Greek", "hard cheese", " pies"),
    ("kasseri", "Greek", "semi-hard cheese", " saganaki"),
    ("filo pastry", "Greek", "pastry", " baklava"),
    ("Kalamata olives", "Greek", "olives", " salads"),
    ("tzatziki", "Greek", "yoghurt dip", " gyros"),
    ("ouzo", "Greek", "spirit", " drinking"),
    ("retsina", "Greek", "wine", " drinking"),
    ("mastic", "Greek", "plant resin", " desserts"),
    # Thai
    ("nam pla", "Thai", "fish sauce", " curry"),
    ("galangal", "Thai", "rhizome", " curry"),
    ("lemongrass", "Thai", "fresh herb", " curry"),
    ("makrut lime leaves", "Thai", "citrus leaves", " curry"),
    ("palm sugar", "Thai", "unrefined sugar", " desserts"),
    ("jasmine rice", "Thai", "long-grain rice", " curry"),
    ("shrimp paste", "Thai", "fermented seafood", " curry"),
    ("green curry paste", "Thai", "chilli paste", " chicken"),
    ("nam prik pao", "Thai", "chilli paste", " soups"),
    ("bird's eye chillies", "Thai", "fresh chilli", " sauces"),
    # Korean
    ("gochujang", "Korean", "fermented chilli paste", " bibimbap"),
    ("gochugaru", "Korean", "dried chilli", " kimchi"),
    ("doenjang", "Korean", "fermented soybean paste", " stew"),
    ("ssamjang", "Korean", "fermented soybean paste", " wraps"),
    ("kimchi", "Korean", "fermented vegetables", " stews"),
    ("soju", "Korean", "spirit", " drinking"),
    ("makgeolli", "Korean", "rice wine", " drinking"),
    ("perilla leaves", "Korean", "fresh herb", " wraps"),
    ("dangmyeon", "Korean", "noodles", " japchae"),
    ("tteok", "Korean", "rice cake", " soups"),
    ("cheonggukjang", "Korean", "fermented soybean paste", " stew"),
    ("maesil cheong", "Korean", "syrup", " tea"),
    ("kkakdugi", "Korean", "fermented vegetables", " rice"),
    ("saeujeot", "Korean", "fermented seafood", " kimchi"),
    ("dotorimuk", "Korean", "acorn jelly", " salads"),
    ("yuja cheong", "Korean", "syrup", " tea"),
    # Middle Eastern
    ("tahini", "Middle Eastern", "seed paste", " hummus"),
    ("sumac", "Middle Eastern", "ground spice", " salads"),
    ("za'atar", "Middle Eastern", "spice blend", " bread"),
    ("baharat", "Middle Eastern", "spice blend", " lamb"),
    ("pomegranate molasses", "Middle Eastern", "syrup", " dressings"),
    ("bulgur", "Middle Eastern", "wheat grain", " tabbouleh"),
    ("freekeh", "Middle Eastern", "wheat grain", " salads"),
    ("labneh", "Middle Eastern", "strained yoghurt", " dips"),
    ("nabulsi cheese", "Middle Eastern", "brined cheese", " knafeh"),
    # British
    ("Marmite", "British", "yeast extract", " toast"),
    ("Stilton", "British", "blue cheese", " crackers"),
    ("Cheddar", "British", "hard cheese", " sandwiches"),
    ("Worcestershire sauce", "British", "condiment sauce", " marinades"),
    ("clotted cream", "British", "cream", " scones"),
    ("Branston pickle", "British", "vegetable chutney", " sandwiches"),
    ("golden syrup", "British", "syrup", " baking"),
    ("suet", "British", "animal fat", " dumplings"),
    # German
    ("sauerkraut", "German", "fermented vegetables", " sausages"),
    ("bratwurst", "German", "pork sausage", " grilling"),
    ("Leberwurst", "German", "offal sausage", " sandwiches"),
    ("pumpernickel", "German", "bread", " sandwiches"),
    ("quark", "German", "fresh cheese", " cheesecake"),
    ("kirsch", "German", "brandy", " desserts"),
    ("Riesling", "German", "wine", " drinking"),
    # North African
    ("harissa", "North African", "chilli paste", " tagines"),
    ("ras el hanout", "North African", "spice blend", " tagines"),
    ("preserved lemons", "North African", "pickled fruit", " tagines"),
    ("couscous", "North African", "pasta", " stews"),
    ("merguez", "North African", "lamb sausage", " grilling"),
    ("argan oil", "North African", "plant oil", " salads"),
    # Vietnamese
    ("rice paper", "Vietnamese", "wrappers", " rolls"),
    ("nuoc cham", "Vietnamese", "dipping sauce", " rolls"),
    ("nuoc mam", "Vietnamese", "fish sauce", " dipping"),
    ("banh pho", "Vietnamese", "noodles", " soup"),
    ("rau ram", "Vietnamese", "fresh herb", " salads"),
    # longer names, added so that the item token counts cover the drug names' on both tokenizers
    ("tonkatsu sauce", "Japanese", "brown sauce", " pork"),
    ("gyoza wrappers", "Japanese", "wrappers", " dumplings"),
    ("tsukemono", "Japanese", "pickled vegetables", " rice"),
    ("yuzu kosho", "Japanese", "chilli paste", " noodles"),
    ("shio koji", "Japanese", "fermented rice seasoning", " marinades"),
    ("kamaboko", "Japanese", "fish cake", " ramen"),
    ("shirataki", "Japanese", "noodles", " sukiyaki"),
    ("sansho pepper", "Japanese", "pepper", " eel"),
    ("kabocha squash", "Japanese", "winter squash", " tempura"),
    ("kasuri methi", "Indian", "dried herb", " curry"),
    ("pav bhaji masala", "Indian", "spice blend", " vegetables"),
    ("Kashmiri chilli", "Indian", "dried chilli", " curry"),
    ("sambar powder", "Indian", "spice blend", " lentils"),
    ("masoor dal", "Indian", "split pulses", " soup"),
    ("moong dal", "Indian", "split pulses", " curry"),
    ("kewra water", "Indian", "flower water", " biryani"),
    ("tianmianjiang", "Chinese", "fermented bean sauce", " noodles"),
    ("Jinhua ham", "Chinese", "dry-cured ham", " soups"),
    ("zha cai", "Chinese", "pickled vegetables", " congee"),
    ("achiote paste", "Mexican", "seed paste", " pork"),
    ("piloncillo", "Mexican", "unrefined sugar", " desserts"),
    ("huitlacoche", "Mexican", "edible fungus", " quesadillas"),
    ("chicharrón", "Mexican", "fried pork rind", " snacking"),
    ("saucisson sec", "French", "pork sausage", " aperitifs"),
    ("Saint-Nectaire", "French", "semi-soft cheese", " cheeseboards"),
    ("Reblochon", "French", "soft cheese", " tartiflette"),
    ("Époisses", "French", "soft cheese", " cheeseboards"),
    ("andouillette", "French", "offal sausage", " grilling"),
    ("Mimolette", "French", "hard cheese", " cheeseboards"),
    ("Pedro Ximénez", "Spanish", "fortified wine", " desserts"),
    ("salsa romesco", "Spanish", "nut sauce", " vegetables"),
    ("Idiazábal", "Spanish", "hard cheese", " tapas"),
    ("Torta del Casar", "Spanish", "soft cheese", " bread"),
    ("lomo embuchado", "Spanish", "cured pork", " tapas"),
    ("chistorra", "Spanish", "pork sausage", " breakfast"),
    ("avgotaraho", "Greek", "cured fish roe", " meze"),
    ("taramasalata", "Greek", "fish roe dip", " bread"),
    ("kritharaki", "Greek", "pasta", " stews"),
    ("Kefalograviera", "Greek", "hard cheese", " saganaki"),
    ("tsipouro", "Greek", "brandy", " drinking"),
    ("prik nam pla", "Thai", "dipping sauce", " rice"),
    ("sriracha sauce", "Thai", "chilli sauce", " noodles"),
    ("massaman curry paste", "Thai", "chilli paste", " beef"),
    ("Caerphilly", "British", "hard cheese", " sandwiches"),
    ("Leberkäse", "German", "baked meat loaf", " sandwiches"),
    ("Schupfnudeln", "German", "noodles", " sauerkraut"),
    ("Mettwurst", "German", "pork sausage", " bread"),
]
CUISINES = ["Italian", "Japanese", "Indian", "Chinese", "Mexican", "French", "Spanish", "Greek", "Thai", "Korean",
            "Middle Eastern", "British", "German", "North African", "Vietnamese"]


def drugs_control() -> None:
    from collections import Counter

    n_cui, n_kind = Counter(r[1] for r in INGREDIENTS), Counter(r[2] for r in INGREDIENTS)
    lines = header(
        "drugs_control", "Non-medical control for `drugs`: named food ingredients with two cross-cutting labellings.",
        f"Control for `drugs`: {len(INGREDIENTS)} named food ingredients, each labelled with the cuisine it belongs "
        f"to (like specialty: {len(CUISINES)} cuisines, {min(n_cui.values())}-{max(n_cui.values())} ingredients "
        f"each) and the kind of food it is (like mechanism: {len(n_kind)} kinds, most of them one or two "
        "ingredients; several kinds span cuisines, e.g. hard cheese, pork sausage, rice wine, spice blend). `use` is "
        "a one-word answer for \"The ingredient {ingredient} is used for\" (like a drug's indication). Ingredient "
        "names are foreign words or short phrases that split into several sub-words, like drug names.",
        "Non-medical control written for medinterp (v3.0.0, rebuilt so that its class structure and item token "
        "counts can be matched to `drugs`, issue 20). Labels are common culinary knowledge (the cuisine an "
        "ingredient is best known from; its kind as a cookbook glossary would give it), written from general "
        "knowledge, not copied from a source; ingredients shared by many cuisines were left out so that each "
        "cuisine label is defensible.",
        "ingredient",
        {"cuisine": {"type": "categorical", "values": CUISINES}, "kind": {"type": "categorical"}},
        ["use", "source", "reviewed"],
        [("The ingredient {ingredient} is used for", "use"),
         "The kitchen was stocked with {ingredient}",
         "Food shopping list: {ingredient}",
         "She was served {ingredient}.",
         "The shop dispensed {ingredient} today.",
         "Current ingredient: {ingredient}",
         "The chef recommended {ingredient}.",
         "His recipe includes {ingredient}.",
         "Food name: {ingredient}"])
    for name, cuisine, kind, use in sorted(INGREDIENTS, key=lambda r: CUISINES.index(r[1])):  # stable
        assert cuisine in CUISINES, name
        lines.append(row({"ingredient": name, "cuisine": cuisine, "kind": kind, "use": use,
                          "source": "common culinary knowledge", "reviewed": ""}))
    write("drugs_control", lines)


# Control for `symptoms` (77 symptoms, 12 body systems): signs of car and household faults, each under the part or
# system it points to (13 parts). {part: [sign, ...]}
SIGNS = {
    "brakes": [
        "grinding", "squealing when braking", "a spongy pedal", "pulling to one side when braking",
        "judder when slowing down", "a pedal that sinks to the floor", "a burning smell after a steep hill",
        "longer stopping distances", "scored discs", "worn pads", "pedal fade",
    ],
    "engine": [
        "knocking", "tapping", "hesitation", "rough idling", "loss of power", "blue smoke on starting",
        "misfires under load", "a rattle on a cold start", "oil on the drive", "oil leaks", "rough running",
        "poor economy",
    ],
    "electrics": [
        "sparking", "buzzing", "a flat battery", "dim headlights", "flickering lights", "blown fuses",
        "dead sockets", "lights that dim when the kettle is on", "a car that will not start on cold mornings",
        "dim lights", "burnt plugs", "loose sockets", "faulty wiring", "weak battery", "loose wiring",
    ],
    "cooling": [
        "overheating", "steam", "coolant puddles", "a temperature gauge in the red",
        "a sweet smell from under the bonnet", "a hissing radiator", "the fan running all the time",
        "a cracked radiator hose", "low coolant", "boiling radiator", "leaking radiator", "split hoses", "noisy fan",
    ],
    "tyres": [
        "punctures", "bald patches", "a bulge in the sidewall", "uneven wear on the edges", "a slow puncture",
        "low pressure warnings", "vibration at motorway speeds", "cracks in the rubber", "worn tread",
        "uneven tread",
    ],
    "exhaust": [
        "backfiring", "a loud rumble", "a blowing noise under the car", "fumes inside the car",
        "a rattling heat shield", "a hole in the silencer", "a droning noise at speed",
        "black soot around the tailpipe",
    ],
    "gearbox": [
        "slipping", "crunching gears", "a whining noise in reverse", "difficulty finding first gear",
        "jumping out of gear", "a burning clutch smell", "a clutch pedal that bites very high",
        "a clunk when selecting drive", "stiff gears", "worn clutch",
    ],
    "suspension": [
        "bouncing", "clunking over bumps", "leaning in corners", "a sagging corner",
        "a knocking noise over potholes", "a car that dives forward when stopping", "uneven ride height",
        "a creaking noise over speed bumps", "broken springs", "leaking shocks", "worn bushes", "body roll",
    ],
    "steering": [
        "wandering", "stiffness", "a heavy wheel at low speed", "a steering wheel that is off centre",
        "play in the wheel", "a groan when turning", "a whine from the pump when turning",
        "a wheel that shakes at speed",
    ],
    "plumbing": [
        "leaks", "flooding", "dripping taps", "low water pressure", "gurgling drains", "a toilet that keeps running",
        "banging pipes when a tap is turned off", "water stains under the sink", "a slow-draining bath",
        "burst pipes", "frozen pipes", "blocked drains", "leaking taps", "noisy pipes",
    ],
    "boiler": [
        "soot", "kettling", "no hot water", "lukewarm radiators", "a pilot light that keeps going out",
        "a pressure gauge below one bar", "a yellow flame instead of blue", "error codes on the display",
        "noisy pump",
    ],
    "roof": [
        "slipped tiles", "missing slates", "water dripping through the ceiling", "daylight visible in the loft",
        "a sagging ridge line", "moss on the tiles", "cracked flashing around the chimney", "blocked gutters",
        "cracked tiles",
    ],
    "damp": [
        "condensation", "mould", "a musty smell", "peeling wallpaper", "tide marks on the walls",
        "black spots on the ceiling", "crumbling plaster at the base of the walls", "flaking paint", "black mould",
        "wet walls",
    ],
}

# Control for `diseases` (90 diseases, 13 specialties): named faults of houses, cars and computers, each under the
# trade that deals with it (14 trades). {trade: [fault, ...]}
FAULTS = {
    "plumber": [
        "limescale", "airlocks", "water hammer", "burst pipes", "frozen pipes", "corroded stopcocks",
        "low water pressure", "leaking compression joints", "backflow", "blocked waste traps", "leaks", "flooding",
        "sticking thermostatic shower valves", "corroded galvanised steel pipes",
    ],
    "electrician": [
        "short circuits", "earth faults", "power surges", "overloaded circuits", "faulty wiring",
        "reversed polarity", "arcing", "voltage drop", "nuisance tripping", "loose terminal connections",
        "non-functioning extractor fans",
    ],
    "roofer": [
        "slipped tiles", "nail sickness", "ponding", "failed flashing", "blistered felt", "a sagging ridge",
        "blocked valleys", "wind uplift", "cracked ridge tiles", "moss", "dislodged lead flashing",
        "perished EPDM membranes", "delaminating fibreglass flat roofs",
    ],
    "joiner": [
        "warped doors", "sticking sashes", "squeaky floorboards", "loose balusters", "rotten window sills",
        "swollen door frames", "creaking stairs", "split skirting boards", "sticking sliding wardrobe doors",
        "woodworm-damaged floor joists",
    ],
    "bricklayer": [
        "spalling", "efflorescence", "cracked lintels", "bowing walls", "failed pointing", "wall tie failure",
        "frost-damaged bricks", "leaning garden walls", "spalled sandstone blocks",
    ],
    "plasterer": [
        "blown plaster", "hairline cracks", "crazing", "popped nail heads", "crumbling render", "hollow render",
        "bulging ceilings", "cracked coving", "cracked Artex ceilings",
    ],
    "glazier": [
        "misted double glazing", "failed seals", "cracked panes", "thermal stress cracks", "rotten putty",
        "condensation between panes", "draughty windows", "broken sash cords", "cracked uPVC window frames",
    ],
    "heating engineer": [
        "kettling", "radiator sludge", "pump failure", "frozen condensate pipes", "pilot light failure",
        "low boiler pressure", "faulty thermocouples", "diverter valve failure", "trapped air",
        "thermostatic radiator valve failure", "underfloor heating manifold leaks", "blocked condensate traps",
    ],
    "pest controller": [
        "woodworm", "termites", "cockroaches", "rats", "mice", "bedbugs", "fleas", "wasp nests", "clothes moths",
        "silverfish", "infestations of carpet beetles", "grey squirrels in the loft",
    ],
    "mechanic": [
        "blown head gaskets", "worn brake pads", "slipping clutches", "flat batteries", "seized calipers",
        "timing belt failure", "worn CV joints", "cracked exhaust manifolds", "rust", "overheating",
        "misfiring spark plugs", "clogged diesel particulate filters", "leaking power-steering racks",
    ],
    "IT technician": [
        "malware", "ransomware", "spyware", "corrupted files", "dead pixels", "memory leaks", "boot loops",
        "disk failure", "driver conflicts", "phishing", "crashes", "freezes", "intermittent Wi-Fi dropouts",
    ],
    "damp specialist": [
        "rising damp", "penetrating damp", "dry rot", "wet rot", "black mould", "condensation",
        "bridged damp courses", "salt contamination", "rot", "mildew", "failed damp-proof membranes",
    ],
    "chimney sweep": [
        "soot build-up", "creosote deposits", "blocked flues", "bird nests", "cracked chimney pots", "down draughts",
        "smoke staining", "crumbling flue liners", "jackdaw nests in chimney pots",
    ],
    "locksmith": [
        "snapped keys", "seized locks", "worn cylinders", "jammed deadbolts", "misaligned strike plates",
        "lost keys", "frozen padlocks", "broken door handles", "failed multipoint locking mechanisms",
    ],
}


def symptoms_control() -> None:
    lines = header(
        "symptoms_control", "Non-medical control for `symptoms`: signs of car and household faults by the part they point to.",
        f"Control for `symptoms`: {sum(map(len, SIGNS.values()))} signs of car and household faults in plain English, each "
        f"labelled with the part or system it most directly points to ({len(SIGNS)} parts, "
        f"{min(map(len, SIGNS.values()))}-{max(map(len, SIGNS.values()))} signs each), in the frames of the symptom "
        "templates. Like the symptoms, they run from one word (\"overheating\") to a whole clause.",
        "Non-medical control written for medinterp (v3.0.0, rebuilt so that its class structure and item token "
        "counts can be matched to `symptoms`, issue 20). Common knowledge of car and household faults (what a "
        "mechanic or a householder would say a sign points to), written from general knowledge; signs that point "
        "to several parts were left out or worded so that one part is the obvious one.",
        "sign", {"part": {"type": "categorical", "values": list(SIGNS)}}, ["source", "reviewed"],
        ["The owner complains of {sign}.",
         "Main complaint: {sign}",
         "She reports {sign} for the past week.",
         "He asked for a repair because of {sign}.",
         "Reported fault: {sign}",
         "The main problem today is {sign}.",
         "Over the last few days she has noticed {sign}.",
         "History of reported fault: {sign}",
         "He describes {sign}"])
    for part, signs in SIGNS.items():
        for x in signs:
            lines.append(row({"sign": x, "part": part, "source": "common knowledge (car and household faults)", "reviewed": ""}))
    write("symptoms_control", lines)


def diseases_control() -> None:
    lines = header(
        "diseases_control", "Non-medical control for `diseases`: named faults by the trade that deals with them.",
        f"Control for `diseases`: {sum(map(len, FAULTS.values()))} named faults of houses, cars and computers, each "
        f"labelled with the trade that deals with it ({len(FAULTS)} trades, {min(map(len, FAULTS.values()))}-"
        f"{max(map(len, FAULTS.values()))} faults each), in the frames of the disease templates. Like disease names "
        "they run from one word (\"limescale\") to long technical phrases.",
        "Non-medical control written for medinterp (v3.0.0, rebuilt so that its class structure and item token "
        "counts can be matched to `diseases`, issue 20). Common knowledge of which tradesperson a householder or "
        "driver would call for each fault, written from general knowledge; faults that several trades fix were "
        "left out or worded so that one trade is the obvious one.",
        "fault", {"trade": {"type": "categorical", "values": list(FAULTS)}}, ["source", "reviewed"],
        ["The building was inspected for {fault}.",
         "Past repair history: {fault}",
         "Finding: {fault}",
         "The repair report lists {fault}.",
         "The engineer confirmed {fault}.",
         "Issue list: {fault}",
         "The notes record a finding of {fault}.",
         "It is being treated for {fault}.",
         "Working hypothesis: {fault}"])
    for trade, faults in FAULTS.items():
        for x in faults:
            lines.append(row({"fault": x, "trade": trade, "source": "common knowledge (trades)", "reviewed": ""}))
    write("diseases_control", lines)


# ------------------------------------------------------------------------------------------------ dosage
# Control for `dosage_drugs` (89 drugs; dose_range: 9 under 10 mg, 53 from 10 to 99 mg, 27 of 100 mg or more):
# things with a defined or regulation weight in grams: coins (the issuing mint's specification), balls and
# throwing implements (the governing body's rule; the midpoint of its range, rounded), units of weight and
# volumes of water (by definition). (thing, grams, source)
_MINT = {"US": "US Mint specification", "UK": "Royal Mint specification", "EU": "euro coin specification (ECB)",
         "CA": "Royal Canadian Mint specification", "AU": "Royal Australian Mint specification",
         "JP": "Japan Mint specification", "CH": "Swissmint specification", "NZ": "Reserve Bank of New Zealand specification"}
WEIGHTS = [
    ("US penny", "2.5", _MINT["US"]), ("US nickel", "5", _MINT["US"]), ("US dime", "2.268", _MINT["US"]),
    ("US quarter", "5.67", _MINT["US"]), ("US half dollar", "11.34", _MINT["US"]), ("US dollar coin", "8.1", _MINT["US"]),
    ("UK 1p coin", "3.56", _MINT["UK"]), ("British 2p coin", "7.12", _MINT["UK"]),
    ("British 5p coin", "3.25", _MINT["UK"]), ("British ten-pence coin", "6.5", _MINT["UK"]),
    ("British twenty-pence coin", "5", _MINT["UK"]), ("British fifty-pence coin", "8", _MINT["UK"]),
    ("British pound coin", "8.75", _MINT["UK"]), ("UK £2 coin", "12", _MINT["UK"]),
    ("1 cent euro coin", "2.3", _MINT["EU"]), ("two-cent euro coin", "3.06", _MINT["EU"]),
    ("five-cent euro coin", "3.92", _MINT["EU"]), ("ten-cent euro coin", "4.1", _MINT["EU"]),
    ("twenty-cent euro coin", "5.74", _MINT["EU"]), ("fifty-cent euro coin", "7.8", _MINT["EU"]),
    ("1 euro coin", "7.5", _MINT["EU"]), ("two-euro coin", "8.5", _MINT["EU"]),
    ("Canadian nickel", "3.95", _MINT["CA"]), ("Canadian dime", "1.75", _MINT["CA"]), ("Canadian quarter", "4.4", _MINT["CA"]),
    ("Canadian loonie", "6.27", _MINT["CA"]), ("Canadian toonie", "6.92", _MINT["CA"]),
    ("Australian five-cent coin", "2.83", _MINT["AU"]), ("Australian ten-cent coin", "5.65", _MINT["AU"]),
    ("Australian twenty-cent coin", "11.3", _MINT["AU"]), ("Australian fifty-cent coin", "15.55", _MINT["AU"]),
    ("Australian $1 coin", "9", _MINT["AU"]), ("Australian $2 coin", "6.6", _MINT["AU"]),
    ("1 yen coin", "1", _MINT["JP"]), ("five-yen coin", "3.75", _MINT["JP"]),
    ("ten-yen coin", "4.5", _MINT["JP"]), ("fifty-yen coin", "4", _MINT["JP"]),
    ("hundred-yen coin", "4.8", _MINT["JP"]),
    ("Swiss five-centime coin", "1.8", _MINT["CH"]), ("Swiss ten-centime coin", "3", _MINT["CH"]),
    ("Swiss twenty-centime coin", "4", _MINT["CH"]), ("Swiss half-franc coin", "2.2", _MINT["CH"]),
    ("Swiss franc coin", "4.4", _MINT["CH"]), ("Swiss two-franc coin", "8.8", _MINT["CH"]),
    ("Swiss five-franc coin", "13.2", _MINT["CH"]),
    ("New Zealand ten-cent coin", "3.3", _MINT["NZ"]), ("New Zealand twenty-cent coin", "4", _MINT["NZ"]),
    ("New Zealand fifty-cent coin", "5", _MINT["NZ"]), ("NZ $1 coin", "8", _MINT["NZ"]),
    ("NZ $2 coin", "10", _MINT["NZ"]),
    ("table tennis ball", "2.7", "ITTF rule"), ("badminton shuttlecock", "5", "BWF rule (4.74-5.50 g)"),
    ("A4 sheet", "5", "ISO 216 A4 (0.0625 m2) at 80 g/m2"), ("US dollar bill", "1", "US Bureau of Engraving and Printing (about 1 g)"),
    ("carat", "0.2", "definition of the metric carat"), ("troy grain", "0.0648", "definition of the grain (64.79891 mg)"),
    ("troy pennyweight", "1.555", "definition (24 grains)"), ("avoirdupois dram", "1.772", "definition of the avoirdupois dram (1/16 oz)"),
    ("scruple", "1.296", "definition of the apothecaries' scruple (20 grains)"),
    ("millilitre of water", "1", "definition of the gram (1 ml of water, approximately)"),
    ("teaspoon of water", "5", "metric teaspoon (5 ml) of water"),
    ("golf ball", "45.93", "R&A / USGA rule (not more than 45.93 g)"), ("tennis ball", "58", "ITF rule (56.0-59.4 g)"),
    ("squash ball", "24", "World Squash rule (23-25 g)"), ("competition racquetball", "40", "USA Racquetball rule (1.4 oz)"),
    ("pickleball", "24", "USA Pickleball rule (22.1-26.5 g)"), ("avoirdupois ounce", "28.35", "definition of the avoirdupois ounce"),
    ("troy ounce", "31.1", "definition of the troy ounce"), ("Indian tola", "11.66", "definition of the tola (180 grains)"),
    ("tablespoon of water", "15", "metric tablespoon (15 ml) of water"),
    ("competition football", "430", "IFAB Law 2 (410-450 g)"), ("competition basketball", "600", "FIBA size 7 (567-650 g)"),
    ("competition volleyball", "270", "FIVB rule (260-280 g)"), ("competition netball", "425", "World Netball rule (400-450 g)"),
    ("competition rugby ball", "435", "World Rugby Law 2 (410-460 g)"), ("handball", "450", "IHF size 3 (425-475 g)"),
    ("water polo ball", "425", "World Aquatics rule (400-450 g)"), ("competition baseball", "145", "MLB rule (5-5.25 oz)"),
    ("softball", "188", "fastpitch softball rule (178-198 g)"), ("competition cricket ball", "160", "MCC Law 4 (155.9-163 g)"),
    ("field hockey ball", "160", "FIH rule (156-163 g)"), ("competition lacrosse ball", "145", "World Lacrosse rule (140-149 g)"),
    ("ice hockey puck", "163", "IIHF rule (156-170 g)"), ("croquet ball", "454", "croquet rule (1 lb)"),
    ("competition American football", "411", "NFL rule (14-15 oz)"), ("men's shot put", "7260", "World Athletics rule"),
    ("women's shot put", "4000", "World Athletics rule"), ("men's discus", "2000", "World Athletics rule"),
    ("women's discus", "1000", "World Athletics rule"), ("men's javelin", "800", "World Athletics rule"),
    ("women's javelin", "600", "World Athletics rule"), ("men's hammer", "7260", "World Athletics rule"),
    ("women's hammer", "4000", "World Athletics rule"), ("avoirdupois pound", "453.59", "definition of the avoirdupois pound"),
    ("imperial stone", "6350.29", "definition of the stone (14 lb)"), ("kilogram", "1000", "definition"),
    ("litre of water", "1000", "1 l of water (approximately)"), ("UK pint of water", "568", "imperial pint (568 ml) of water"),
    ("US gallon of water", "3785", "US gallon (3.785 l) of water"),
    ("long hundredweight", "50802.35", "definition (112 lb)"), ("troy pound", "373.24", "definition (12 troy ounces)"),
    ("Japanese momme", "3.75", "definition of the momme"), ("quarter-pound", "113.4", "definition (4 oz)"),
    ("half-pound", "226.8", "definition (8 oz)"), ("half-kilogram", "500", "definition"),
    ("padel ball", "58", "FIP rule (56.0-59.4 g)"), ("futsal ball", "420", "FIFA Futsal Law 2 (400-440 g)"),
    ("ultimate frisbee disc", "175", "WFDF rule (175 g disc)"),
    ("men's barbell", "20000", "IWF rule (20 kg men's bar)"), ("women's barbell", "15000", "IWF rule (15 kg women's bar)"),
    ("red bumper plate", "25000", "IWF colour code (red 25 kg)"), ("blue bumper plate", "20000", "IWF colour code (blue 20 kg)"),
    ("yellow bumper plate", "15000", "IWF colour code (yellow 15 kg)"), ("green bumper plate", "10000", "IWF colour code (green 10 kg)"),
    ("cubic metre of water", "1000000", "1 m3 of water (approximately)"), ("US quart of water", "946", "US quart (946 ml) of water"),
    ("UK gallon of water", "4546", "imperial gallon (4.546 l) of water"), ("US pint of water", "473", "US pint (473 ml) of water"),
    ("decilitre of water", "100", "1 dl of water (approximately)"), ("centilitre of water", "10", "1 cl of water (approximately)"),
    ("US fluid ounce of water", "29.57", "US fluid ounce (29.57 ml) of water"),
    ("UK quart of water", "1136.5", "imperial quart (1.1365 l) of water"),
    ("metric quintal", "100000", "definition (100 kg)"), ("Russian pood", "16380", "definition of the pood (16.38 kg)"),
    ("women's cricket ball", "145.5", "MCC Law 4, women's ball (140-151 g)"),
]


def _shift(x: str, places: int) -> str:
    """A decimal string times 10**places, written without trailing zeros (exact: no float rounding)."""
    from decimal import Decimal

    d = Decimal(x).scaleb(places).normalize()
    s = format(d, "f")
    return s


def _range(g: float) -> str:
    return "under 10 g" if g < 10 else ("10 to 99 g" if g < 100 else "100 g or more")


def dosage_control() -> None:
    from collections import Counter

    n = Counter(_range(float(g)) for _, g, _ in WEIGHTS)
    lines = header(
        "dosage_drugs_control", "Non-medical control for `dosage_drugs`: things with a defined or regulation weight in grams.",
        f"Control for `dosage_drugs`: {len(WEIGHTS)} things with a defined or regulation weight in grams (coins, "
        "balls and throwing implements, units of weight, volumes of water), labelled by weight range "
        f"({n['under 10 g']} under 10 g, {n['10 to 99 g']} from 10 to 99 g, {n['100 g or more']} of 100 g or more; "
        "like dose_range) and by weight (continuous, like dose_mg). `amount` is the whole weight string, "
        "`amount_x10` / `amount_div10` its tenfold foils, `answer` its leading digit. The templates put \"one\" "
        "before the item where the medical frame has an adjective (\"adult\"), so the item needs no article.",
        "Non-medical control written for medinterp (v3.0.0, rebuilt so that its class structure and item token "
        "counts can be matched to `dosage_drugs`, issue 20). Coin weights are the issuing mints' published "
        "specifications, ball and implement weights the governing bodies' rules (the midpoint of the allowed range, "
        "rounded, where the rule gives a range), units and volumes of water follow from their definitions; written "
        "from general knowledge of those sources, each row names its source in `source` for a reviewer to check.",
        "thing",
        {"amount_range": {"type": "categorical", "values": ["under 10 g", "10 to 99 g", "100 g or more"]},
         "amount_g": {"type": "continuous"}},
        ["answer", "amount", "amount_x10", "amount_div10", "source", "reviewed"],
        [("The standard weight of one {thing} is ", "answer"),
         ("Standard weight per item: {thing} ", "answer"),
         "She lifts one {thing} by hand.",
         ("A standard weight of one {thing} is ", "answer"),
         ("The official weight of one {thing} is ", "answer"),
         "The referee then weighed exactly one {thing}.",
         "Stock item: {thing} only",
         "She was given one {thing}.",
         "Weight check for one {thing}"])
    for thing, g, src in WEIGHTS:
        amount = _shift(g, 0)
        lines.append(row({"thing": thing, "amount_g": float(g) if "." in amount else int(amount),
                          "amount_range": _range(float(g)), "answer": amount[0], "amount": f"{amount} g",
                          "amount_x10": f"{_shift(g, 1)} g", "amount_div10": f"{_shift(g, -1)} g",
                          "source": src, "reviewed": ""}))
    write("dosage_drugs_control", lines)


# ------------------------------------------------------------------------------------------------ progression
# Control for `progression` (6 diseases x 10 stages): 8 everyday processes x 10 ordered stages (0 = start .. 9 = end),
# written as descriptions of the same lengths in tokens as the clinical ones (several with numbers, like eGFR or
# FEV1 values); none is circular. {process: [stage 0, ..., stage 9]}
PROCESSES = {
    "house construction": [
        "an empty plot of land with planning permission just granted",
        "the site cleared and surveyed, the foundations marked out with string lines and pegs",
        "trenches dug one metre deep and the concrete foundations poured",
        "the ground floor slab laid and the first courses of brick above ground",
        "the ground floor walls built up to ceiling height with scaffolding around them",
        "the upper floor walls finished and the roof timbers lifted into place",
        "the roof tiled, windows and doors fitted and the shell watertight",
        "first fix done: wiring, plumbing and heating pipes run, walls plastered",
        "second fix done, with kitchen and bathrooms fitted, sockets live and the rooms painted",
        "the finished house signed off by the building inspector, the scaffolding gone, the garden turfed and the keys handed to the new owners",
    ],
    "tomato plant growth": [
        "a dry seed still in its packet",
        "the seed swelling in damp compost on a warm windowsill",
        "a pale shoot breaking through the soil",
        "a seedling 3 cm tall with its first leaves",
        "a young plant with four true leaves, repotted",
        "a leafy plant 60 cm tall tied to a bamboo cane",
        "the first yellow flowers opening on the truss",
        "small green fruits forming where flowers were",
        "full-sized fruits swelling and slowly turning from green to orange",
        "ripe red tomatoes ready to pick from a plant two metres tall",
    ],
    "bread making": [
        "500 g of flour, water, yeast and salt weighed out on the counter",
        "the ingredients mixed into a shaggy dough",
        "the dough kneaded for ten minutes until smooth and stretchy",
        "the dough left in a covered bowl to rise for an hour",
        "the dough doubled in size and knocked back",
        "the dough shaped into a loaf and placed in a greased tin",
        "the loaf proving for 45 minutes until puffy and domed above the tin",
        "the loaf slashed on top and put into an oven at 220 degrees",
        "the crust browning, the loaf sounding hollow and the kitchen smelling of fresh bread",
        "the baked loaf cooling on a rack, ready to slice",
    ],
    "marathon race": [
        "runners gathering at the start line before the gun",
        "the first kilometre, runners packed together",
        "5 km passed in 25 minutes, settled into a steady, even pace",
        "10 km reached, with the pack spreading out along the road",
        "the halfway mark at 21 km, still running comfortably and drinking well",
        "30 km passed, legs heavy and the pace starting to slow",
        "hitting the wall at 33 km, every step forced and the legs close to cramping",
        "35 km with cramp in both calves, walking through the water station at the roadside",
        "the last two kilometres with the finish in sight",
        "across the finish line after 42.2 km in just under four hours, wrapped in a foil blanket with a medal round the neck",
    ],
    "car ageing": [
        "a brand-new car in the showroom, never driven on a road",
        "a one-year-old car with 10,000 miles and its first service done",
        "three years old, 35,000 miles, passing its first MOT with no advisories",
        "five years old with 60,000 miles and the original tyres replaced",
        "seven years old, 80,000 miles, small rust spots on the wheel arches",
        "nine years old with 100,000 miles, needing a new clutch and timing belt",
        "twelve years old with 130,000 miles, an oil leak and worn suspension",
        "fifteen years old, failing its MOT on rusty brake pipes",
        "eighteen years old with 190,000 miles, smoking badly and rarely starting",
        "a twenty-year-old wreck towed away to the scrapyard and crushed",
    ],
    "phone battery ageing": [
        "a new phone battery at 100% health, lasting two full days on a charge",
        "battery health 98% after a few months, the phone still lasting all day long",
        "battery health 93% after a year, needing a charge every single evening",
        "battery health 88%, running low by late afternoon",
        "battery health 84% after two years, charged twice a day",
        "battery health 79%, with a service warning shown in the settings",
        "battery health 74%, with the phone slowing itself down to save power",
        "battery health 68%, shutting down in the cold at 20% charge left",
        "battery health 61%, lasting two hours and running hot while charging",
        "a swollen battery pushing the screen out of the case, the phone no longer turning on and the battery sent away for safe recycling",
    ],
    "long-haul flight": [
        "passengers queueing at the gate to board",
        "everyone seated, the doors closed and the aircraft pushed back from the stand",
        "the wheels leaving the runway on take-off",
        "climbing through 10,000 feet with the seatbelt signs still on",
        "cruising at 38,000 feet, the first meal served",
        "the middle of the flight, six hours out over the Atlantic Ocean, the cabin lights dimmed and most passengers asleep",
        "breakfast served about two hours before landing",
        "the descent begun, the seatbelt signs back on, tray tables stowed and seats upright",
        "the final approach with the landing gear down, the flaps fully extended and the bright runway lights straight ahead in the dark night",
        "parked at the arrival gate with the doors open and passengers leaving",
    ],
    "candle burning": [
        "a new candle, never lit, with a straight white cotton wick",
        "the wick just lit, a small flame and a little melted wax around it",
        "burning for ten minutes, a pool of melted wax around the wick",
        "an hour in, the candle a whole centimetre shorter than when it was first lit",
        "burning steadily, about a quarter of the wax now gone",
        "half the candle burnt away after four hours",
        "wax dripping down the sides, two-thirds of the candle gone",
        "only a short stub left, the flame flickering in a deep pool of wax",
        "the last centimetre of wax, the flame sputtering",
        "burnt out, leaving a blackened wick in a puddle of hard wax",
    ],
}


def progression_control() -> None:
    lines = header(
        "progression_control", "Non-medical control for `progression`: everyday processes in 10 ordered stages.",
        f"Control for `progression`: {len(PROCESSES)} everyday processes ({', '.join(PROCESSES)}), each in 10 "
        "ordered stages from the start (stage 0) to the end (stage 9), written as short descriptions like the "
        "clinical stage descriptions (some with numbers: kilometres, miles, battery health, feet). Continuous "
        "label `stage`, categorical `process` (like `disease`).",
        "Non-medical control written for medinterp (v3.0.0, rebuilt so that it has at least as many items per stage "
        "as `progression` and description lengths in tokens that cover the clinical ones on Gemma 3 and SmolLM2, "
        "issue 20). The order of stages is common knowledge; the stage index is a position within this file, not a "
        "measured quantity.",
        "description",
        {"process": {"type": "categorical", "values": list(PROCESSES)}, "stage": {"type": "continuous"}},
        ["source", "reviewed"],
        ["Field note: {description}.",
         "Findings at this visit: {description}.",
         "Assessment: {description}.",
         "On review today: {description}.",
         "Summary of the notes: {description}.",
         "Current status: {description}.",
         "Latest progress report: {description}.",
         "The observer wrote: {description}.",
         "Progress note: {description}"])
    for process, stages in PROCESSES.items():
        for i, d in enumerate(stages):
            lines.append(row({"process": process, "stage": i, "description": d, "source": "written for medinterp",
                              "reviewed": ""}))
    write("progression_control", lines)


# ------------------------------------------------------------------------------------------------ age
# Control for `age` (ages 1..100 x male/female, 9 templates): the age of a building, 1..100 years, of two materials
# (wooden / stone play the part of male / female: one-token adjectives in the same slots), in templates that copy
# the age templates word for word where the medical word has a non-medical counterpart.
AGE_TEMPLATES = [
    "Building age: {age} years. Material: {thing}. Presenting problem:",
    "The building, {thing}, aged {age}, stands beside",
    "Age {age}, {thing}. History of present repairs:",
    "Material: {thing}. Age: {age}",
    "The {thing} building is aged {age}",
    "Renovation letter: {thing} building aged {age} years.",
    "Site survey record: material {thing}, age {age}, seen on site.",
    "Consultation about a {thing} building that is {age} years old.",
    "Survey note. Material {thing}; age in years: {age}",
]


def age_control() -> None:
    lines = header(
        "age_control", "Non-medical control for `age`: the age of a wooden or stone building, every year from 1 to 100.",
        "Control for `age`: the age of a building, every year from 1 to 100, for two materials (wooden, stone: 200 "
        "rows), in the frames of the age templates (`thing` plays the part of `sex`: a one-token adjective in the "
        "same slot). Continuous label `age`, categorical `thing`.",
        "Non-medical control written for medinterp (v3.0.0: the same ages and the same template structure as `age`, "
        "frames of the same token length before and after the age on Gemma 3 and SmolLM2, issue 20). No facts: "
        "every age is a plausible building age.",
        "age", {"age": {"type": "continuous"}, "thing": {"type": "categorical", "values": ["wooden", "stone"]}},
        ["source", "reviewed"], AGE_TEMPLATES)
    for thing in ("wooden", "stone"):
        for age in range(1, 101):
            lines.append(row({"age": age, "thing": thing, "source": "written for medinterp (age and material only)",
                              "reviewed": ""}))
    write("age_control", lines)


if __name__ == "__main__":
    drugs_control()
    symptoms_control()
    diseases_control()
    dosage_control()
    progression_control()
    age_control()
