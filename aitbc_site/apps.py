from django.apps import AppConfig


class AitbcSiteConfig(AppConfig):
    name = "aitbc_site"
    verbose_name = "AITBC site"
