"""The automation page (its API is ``automation/urls.py``)."""

from django.urls import path

from automation import views

urlpatterns = [
    path("automation/", views.automation, name="automation-page"),
]
