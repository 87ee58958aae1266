"""Class names and prompt templates for zero-shot heads (CLIP models, docs/models.md#clip).

A benchmark's :class:`Prompts` say what its classes are called and how the papers' code turns a
class name into captions; ``ftbench/models/clip.py`` embeds the captions with a CLIP text tower and
averages them per class (open_clip's ``build_zero_shot_classifier``). Each table names the file of
the released code it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Prompts:
    """Class names in label order and templates: text with one ``{}``, or a function of the name (as
    open_clip's ``OPENAI_IMAGENET_TEMPLATES``)."""

    classnames: tuple[str, ...]
    templates: tuple[Any, ...]
    source: str = ""  # where the names and templates come from

    def captions(self, label: int) -> list[str]:
        """Every template filled with class ``label``'s name."""
        name = self.classnames[label]
        return [t(name) if callable(t) else t.format(name) for t in self.templates]

    def relabelled(self, order: tuple[int, ...] | list[int]) -> Prompts:
        """The prompts of a task whose label ``i`` is this task's class ``order[i]``."""
        return Prompts(tuple(self.classnames[j] for j in order), self.templates, self.source)


# CLIP's prompts for MNIST (openai/CLIP, data/prompts.md): digits are handwritten numbers too.
DIGITS = Prompts(tuple(str(d) for d in range(10)), ('a photo of the number: "{}".',),
                 "openai/CLIP data/prompts.md (MNIST)")


def _article(name: str) -> str:
    """wise-ft's ``append_proper_article`` (src/templates/utils.py)."""
    name = name.replace("_", " ")
    return ("an " if name[0] in "aeiou" else "a ") + name


# CLIP's prompts for CIFAR-10 (openai/CLIP data/prompts.md); torchvision's label order.
CIFAR10 = Prompts(
    ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    tuple(f"a {kind}photo of {art} {size}{{}}." for art in ("a", "the")
          for kind, size in [("", ""), ("blurry ", ""), ("black and white ", ""), ("low contrast ", ""),
                             ("high contrast ", ""), ("bad ", ""), ("good ", ""), ("", "small "), ("", "big ")]),
    "openai/CLIP data/prompts.md (CIFAR10)")
# FMoW-WILDS: wise-ft src/datasets/fmow.py (= WILDS' categories) and src/templates/fmow_template.py
# (identical in FLYP and AutoFT).
FMOW_CLASSES = (
    'airport', 'airport_hangar', 'airport_terminal', 'amusement_park', 'aquaculture',
    'archaeological_site', 'barn', 'border_checkpoint', 'burial_site', 'car_dealership',
    'construction_site', 'crop_field', 'dam', 'debris_or_rubble', 'educational_institution',
    'electric_substation', 'factory_or_powerplant', 'fire_station', 'flooded_road', 'fountain',
    'gas_station', 'golf_course', 'ground_transportation_station', 'helipad', 'hospital',
    'impoverished_settlement', 'interchange', 'lake_or_pond', 'lighthouse', 'military_facility',
    'multi-unit_residential', 'nuclear_powerplant', 'office_building', 'oil_or_gas_facility',
    'park', 'parking_lot_or_garage', 'place_of_worship', 'police_station', 'port', 'prison',
    'race_track', 'railway_bridge', 'recreational_facility', 'road_bridge', 'runway', 'shipyard',
    'shopping_mall', 'single-unit_residential', 'smokestack', 'solar_farm', 'space_facility',
    'stadium', 'storage_tank', 'surface_mine', 'swimming_pool', 'toll_booth', 'tower',
    'tunnel_opening', 'waste_disposal', 'water_treatment_facility', 'wind_farm', 'zoo',
)
FMOW = Prompts(FMOW_CLASSES, (
    lambda c: f"satellite photo of a {c}.", lambda c: f"aerial photo of a {c}.",
    lambda c: f"satellite photo of {_article(c)}.", lambda c: f"aerial photo of {_article(c)}.",
    *(f for where in ("asia", "africa", "the americas", "europe", "oceania")
      for f in (lambda c, w=where: f"satellite photo of a {c} in {w}.", lambda c, w=where: f"aerial photo of a {c} in {w}.")),
    lambda c: f"a photo of a {c}.", lambda c: f"{c}.",
), "mlfoundations/wise-ft src/datasets/fmow.py, src/templates/fmow_template.py")
# iWildCam-WILDS: wise-ft src/datasets/iwildcam_metadata/labels.csv, rows with y < 99999, the 'english'
# column lower-cased, in label order (as src/datasets/iwildcam.py builds it; identical in FLYP and AutoFT).
IWILDCAM = Prompts((
    'empty', 'white-lipped peccary', 'central american agouti', 'lowland paca', 'cougar',
    'south american tapir', 'collared peccary', 'red brocket', 'ocelot', 'ruddy quail-dove',
    'south american coati', 'nine-banded armadillo', 'tayra', 'common opossum',
    'crab-eating raccoon', 'jaguar', 'giant anteater', 'great tinamou', 'tapeti', 'jaguarundi',
    'margay', 'brown brocket', 'gray four-eyed opossum', 'wild goat', 'cattle cow bull', 'sheep',
    'wolf', 'scrub hare', 'olive baboon', 'common genet', 'cape bushbuck', 'slender mongoose',
    'african bush elephant', 'gambian pouched rat', 'steenbok', 'striped hyena', 'impala',
    'spotted hyena', 'caracal', 'wild horse', 'lion', 'common eland', 'waterbuck',
    'common warthog', 'leopard', 'white-tailed mongoose', 'black-backed jackal', 'african buffalo',
    'plains zebra', 'giraffe', 'hartebeest', 'vervet monkey', "günther's dik-dik", 'bushpig',
    "grant's gazelle", "thomson's gazelle", 'common ostrich', 'aardvark', 'cheetah',
    'white-bellied bustard', 'wildcat', 'east african oryx', 'buff-crested bustard',
    'kori bustard', 'black-bellied bustard', 'great argus', 'leopard cat', 'banded palm civet',
    'indian muntjac', 'wild boar', 'sun bear', 'sambar deer', 'malayan porcupine',
    'asian golden cat', 'tiger', 'three-striped ground squirrel', 'common emerald dove',
    'cape genet', 'crested porcupine', 'african wild dog', 'rock hyrax', 'dog', 'unknown bird',
    'unknown bat', 'amazonian motmot', 'black agouti', 'geotrygon', 'white-nosed coati',
    'northern tamandua', 'opossum', 'crested guan', 'hummingbird', 'plain parakeet', 'dromedary',
    'bat-eared fox', 'vulturine guineafowl', 'zebra', 'aardwolf', 'serval', 'greater kudu',
    'hippopotamus', 'spotted thick-knee', 'masked palm civet', 'marbled cat', 'dhole',
    'asian water monitor', 'yellow-throated marten', 'banded linsang', 'crested partridge',
    "salvadori's pheasant", 'bronze-tailed peacock-pheasant', 'sunda pangolin', 'sumatran serow',
    'macaque', 'handsome spurfowl', "l'hoest's monkey", 'black-fronted duiker',
    'african brush-tailed porcupine', 'chimpanzee', 'blue monkey', 'mountain squirrel',
    'western yellow wagtail', 'yellow-whiskered greenbul', 'little greenbul',
    'charming thicket rat', 'forest giant squirrel', "boehm's bush squirrel",
    'yellow-backed duiker', 'common rufous-nosed rat', 'moustached grass warbler',
    "peters's striped mouse", 'african wading rat', 'stella wood mouse', 'servaline genet',
    'side-striped jackal', 'african pygmy mouse', "ross's turaco", 'tambourine dove',
    "tullberg's soft-furred mouse", 'big-eared swamp rat', 'egyptian goose', 'link rat',
    'grey-winged francolin', 'olive thrush', 'brocket deer', 'gray fox', 'ocellated turkey',
    'great curassow', 'lowland paca', "baird's tapir", 'raccoon', 'white-tailed deer',
    'grey-headed dove', 'central american red brocket', 'striped hog-nosed skunk',
    'yucatan brown brocket', 'plain chachalaca', "thomas's langur", 'sunda clouded leopard',
    'sumatran hog badger', 'mouse-deer', 'sumatran treepie', 'rufous-vented niltava',
    'silver-eared mesia', 'red-billed partridge', 'gallopheasants', 'javan whistling thrush',
    'crestless fireback', 'crested serpent eagle', 'blue whistling thrush', 'collared mongoose',
    'crab-eating fox', 'motorcycle', 'deer mouse', 'jaguarundi', 'bare-throated tiger heron',
    'blue ground dove', 'red squirrel', 'unknown bird', 'grey-cowled wood rail', 'unknown dove',
    'central american red brocket',
), ("a photo of {}.", "{} in the wild."), "mlfoundations/wise-ft src/datasets/iwildcam.py, src/templates/iwildcam_template.py")
# Camelyon17-WILDS: none of the papers' code has prompts for it; ftbench uses CLIP's PatchCamelyon ones
# (openai/CLIP data/prompts.md; FLYP's patchcamelyon template), the same task (1 = tumour tissue).
CAMELYON17 = Prompts(("lymph node", "lymph node containing metastatic tumor tissue"), ("this is a photo of {}",),
                     "openai/CLIP data/prompts.md (PatchCamelyon): ftbench's choice, no paper prompts Camelyon17")
# Waterbirds and CelebA (blond hair): none of the papers' code has prompts; ftbench uses perceptionCLIP's
# simple templates (umd-huang-lab/perceptionCLIP src/templates/waterbirds_template.py, celeba_template.py).
WATERBIRDS = Prompts(("landbird", "waterbird"), ("a photo of a {}.",),
                     "umd-huang-lab/perceptionCLIP: ftbench's choice, no paper prompts Waterbirds")
CELEBA = Prompts(("dark hair", "blond hair"), ("a photo of a celebrity with {}.",),
                 "umd-huang-lab/perceptionCLIP: ftbench's choice, no paper prompts CelebA")


def imagenet() -> Prompts | None:
    """ImageNet's 1000 class names and OpenAI's 80 templates, as open_clip ships them (identical to
    wise-ft's openai_classnames and openai_imagenet_template); None without open_clip."""
    try:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
    except ImportError:
        return None
    return Prompts(tuple(IMAGENET_CLASSNAMES), tuple(OPENAI_IMAGENET_TEMPLATES), "open_clip zero_shot_metadata (OpenAI's)")
