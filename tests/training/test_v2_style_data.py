"""The v2 configs train on dataset/STYLE_v2 (data_prep.stylesets); a missing one names the command that
fetches it."""
import pytest

from anime_gan.training.config import ConfigError, TrainConfig, validate_config


def test_training_names_the_command_that_fetches_a_missing_v2_style_set(tmp_path):
    for dataset, fetch in [("Shinkai_v2", "--source=official-v2 --style=Shinkai\" for the AnimeGANv2 style set"),
                           ("Shinkai", "--source=official\" for the official set")]:
        with pytest.raises(ConfigError) as e:
            validate_config(TrainConfig(dataset=dataset, dataset_dir=str(tmp_path)).resolved())
        assert str(e.value) == (f"Dataset folder {tmp_path / dataset / 'style'} does not exist; run `make data` "
                                f"(ARGS=\"{fetch}) or point --dataset_dir/--dataset at your data.")
