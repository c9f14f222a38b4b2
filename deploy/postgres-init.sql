-- Each service owns its data: one database per service.
CREATE DATABASE planning;
CREATE DATABASE consent;
CREATE DATABASE notify;
