"""``edgeva bench paper``: the paper's evaluation (section 5) reproduced on edgeva."""
