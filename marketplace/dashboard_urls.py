"""The marketplace's pages (its REST API is ``marketplace/urls.py``)."""

from django.urls import path

from marketplace import views

urlpatterns = [
    path("market/", views.market, name="market-page"),
    path("market/jobs/<str:job_id>", views.job, name="market-job-page"),
]
